"""Runnable examples: ``trioserve examples.hello:app``, ``trioserve examples.echo:handler``."""
