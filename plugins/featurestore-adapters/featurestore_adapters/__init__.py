"""featurestore plugin: domain adapters fitted on stored features.

Registers ``pca-whiten``, ``project``, ``quantize`` and ``linear-head`` through the
``register_adapters`` hook (see :mod:`featurestore_adapters.plugin`). Parameters are
declared and checked in :mod:`featurestore_adapters.params`; the arithmetic is in
:mod:`~featurestore_adapters.pca`, :mod:`~featurestore_adapters.quantize` (with
:mod:`~featurestore_adapters.kmeans`) and :mod:`~featurestore_adapters.linear`. Nothing is
imported here, so loading the entry point stays cheap.
"""
