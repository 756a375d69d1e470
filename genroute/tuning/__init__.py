"""Supervised fine-tuning: Vertex AI tuning jobs and local LoRA (optional ``tune-local`` extra).

- ``genroute.tuning.data``: the shared JSONL example format, its checks and the seeded split.
- ``genroute.tuning.vertex``: Vertex AI supervised tuning jobs (``tune_vertex``, ``resume_vertex``).
- ``genroute.tuning.storage``: their data uploaded to Cloud Storage (or written to a JSONL file).
- ``genroute.tuning.local_lora``: LoRA on the embedded Gemma 3 270M, served by llama.cpp.
- ``genroute.tuning.config_file``: registering a tuned backend in a config file, atomically.
- ``genroute.tuning.cli``: ``genroute tune``.

Nothing heavy is imported here: each module loads google-genai, torch or llama.cpp only when used.
"""
