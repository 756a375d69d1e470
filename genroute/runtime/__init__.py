"""The runtime layer: what backends, engines and knowledge need while a request runs.

It sits below every package that does the work and imports none of them::

    cli, demo            commands
    bench                benchmarks, reports, policy compilation
    router, outcomes     composes: policy decision, rung execution, validation; outcome records
    backends, policies   techniques and routing decisions
    knowledge, tuning    Chroma collections and embedders; tuning jobs; labeled data and scorers
    engines              model runtimes
    config               configuration models and loading
    runtime              run context, resources, pricing, billing of lost attempts, telemetry, the sync bridge (with
                         engines/base.py, the engine interface they are written against); state
                         (memory | Redis store) and admission (the gates around every attempt)
    errors, types, construct, ...   leaves

``tests/test_layers.py`` walks the imports and fails on a cycle or on a module importing a layer above its own.
"""
