"""Why a node refused or could not confirm a write: shared by the node and the HTTP layer."""


class NotWritable(Exception):
    """This node may not acknowledge writes now (not primary, or its lease is not valid)."""


class OutcomeUnknown(Exception):
    """The write reached the local DB but the lease ran out before it could be acknowledged."""


class DiskFull(NotWritable):
    """The data dir's file system is (almost) full: writes are refused until space returns."""


class WaitTimeout(Exception):
    """Managed mode: a seq was not confirmed within the caller's timeout (it may be later)."""
