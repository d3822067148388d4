"""The storage controller (SC): one per cluster, as Eucalyptus' SC.

It owns the cluster's volumes and snapshots as image files (``files``), serves each attached volume
over NBD to whichever node runs the instance (``exports``), and answers the cluster controller's
signed messages (``controller``); ``daemon`` runs it as a process of its own (``cloudlab sc``).
"""
