"""featurestore plugin: temporal aggregators that turn a video's frame features into clip features.

Registers ``mean``, ``max``, ``meanmax``, ``trimmed-mean`` and ``motion`` through the
``register_aggregators`` hook (see :mod:`featurestore_temporal.plugin`); the arithmetic is
in :mod:`featurestore_temporal.aggregators`, parameter checking and the ``NAME:key=value``
syntax in :mod:`featurestore_temporal.spec`. Nothing is imported here, so loading the
entry point stays cheap.
"""
