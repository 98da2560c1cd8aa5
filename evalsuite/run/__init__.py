"""The run side: from models and tasks to scores in the store.

``evaluation`` (``evaluate``: the runner), ``dry_run`` (what a run costs) and its
``speed_profile``, the per-task ``audit``, the ``request_cache`` that makes killed runs resumable,
``manifest`` (what a run was), ``ray_shards`` (shards as Ray tasks), ``nightly`` (run, compare,
decide) and ``contamination`` (Min-K% Prob). These modules load models, so they may import lm-eval,
transformers and torch; nothing on the read side imports them at module level.
"""
