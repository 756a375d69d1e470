"""Supervised fine-tuning: Vertex AI tuning jobs and local LoRA (optional ``tune-local`` extra)."""
