"""Clustered-database decisions without I/O: record migration between nodes (`migration`),
persistent transactions (`persistent`), cluster-wide traverses (`traverse`), the database
registry and attach rules (`registry`). The shell that reads and writes TDB files is
`daemon/store/`; the daemon service that joins them is `server/databases.py`."""
