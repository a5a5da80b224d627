"""Adapters that bring distlog into the training frameworks people already use.

Each lives in its own module, imported only when used, behind its extra:
``distlog.integrations.lightning`` (``pip install 'distlog[lightning]'``),
``distlog.integrations.transformers`` (``distlog[transformers]``) and
``distlog.integrations.accelerate`` (``distlog[accelerate]``). Importing this package imports
none of the frameworks.
"""
