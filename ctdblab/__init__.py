"""ctdblab: pyctdbd (a CTDB-equivalent daemon) and the Mininet lab that measures it.

The top-level folders of the repository are sub-packages of this one:
``ctdblab.daemon`` (daemon/), ``ctdblab.cluster`` (cluster/), ``ctdblab.chaos`` (chaos/),
``ctdblab.scenarios`` (scenarios/) and ``ctdblab.reports`` (reports/).
"""

__version__ = "0.1.0"
