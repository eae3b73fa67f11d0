"""featurestore plugin: ``example_patchnet``, a tiny pure-torch ViT loaded from safetensors.

It exists to show, end to end, what a backbone plugin needs: see
``docs/writing-a-backbone-plugin.md`` in the featurestore repository. The version is
read from the installed distribution's metadata (``importlib.metadata``), so there is
one source of truth: ``pyproject.toml``.
"""
