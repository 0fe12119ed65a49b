"""Feature definitions of the fraud example: customers and merchants over raw.transactions.

Load them explicitly: ``lakeloop features apply examples.fraud.features:definitions``. They live in
the package (``lakeloop/demo/features.py``) so that ``lakeloop demo`` has them wherever lakeloop is
installed; an example project would define its views right here, the same way.
"""

from lakeloop.demo.features import customer, customer_stats, definitions, merchant, merchant_stats, transaction_signals

__all__ = ["customer", "customer_stats", "definitions", "merchant", "merchant_stats", "transaction_signals"]
