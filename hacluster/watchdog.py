"""The Linux watchdog device: armed while this node is a writable primary, fed by the lease loop.

Owns opening the device (``watchdog.device``, ``/dev/watchdog`` by default), setting its timeout
when it is a real watchdog (a character device), feeding it, and the magic close (write ``V``,
then close) that disarms it. The control loop arms it before a promotion opens the write gate,
feeds it on every pass while the node is primary and writable, and disarms it on demotion, in
pause mode and at shutdown. If the process then hangs, the host is reset before anything it
believed could be trusted.

Modes: ``off`` (never touch a device), ``automatic`` (use the device if it can be opened, else
log and carry on), ``required`` (a node that cannot arm it never becomes primary: it reports
itself unhealthy, so it is not a candidate, and refuses a lock it wins anyway).

It must never block or raise into the caller on a feed or disarm (a failing watchdog is logged;
fencing does not wait on it), and never leave the device armed after a demotion it saw.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import struct
from dataclasses import dataclass

from hacluster.config import WatchdogConfig

log = logging.getLogger(__name__)

# From linux/watchdog.h: _IOWR('W', 6, int) and _IOR('W', 7, int).
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


class WatchdogError(Exception):
    """The device could not be armed (only raised in ``required`` mode)."""


@dataclass(slots=True)
class WatchdogStatus:
    mode: str
    device: str
    armed: bool = False
    feeds: int = 0
    timeout_s: int | None = None
    error: str | None = None


class Watchdog:
    def __init__(self, cfg: WatchdogConfig, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self._fd: int | None = None
        self.status = WatchdogStatus(cfg.mode, str(cfg.device))

    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "off"

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def usable(self) -> bool:
        """May this node become primary, as far as the watchdog goes? Never arms the device.

        Only ``required`` mode can say no: when the device is missing or not writable.
        """
        if self.cfg.mode != "required" or self.armed:
            return True
        return os.access(self.cfg.device, os.W_OK)

    def arm(self) -> bool:
        """Open the device (idempotent). False when it could not be armed in automatic mode.

        Raises WatchdogError in required mode when the device cannot be opened.
        """
        if not self.enabled or self.armed:
            return self.armed
        try:
            fd = os.open(self.cfg.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.status.error = f"cannot open {self.cfg.device}: {exc.strerror or exc}"
            if self.cfg.mode == "required":
                raise WatchdogError(
                    f"{self.name}: watchdog required but {self.status.error}") from None
            log.warning("%s: watchdog not armed (automatic mode): %s", self.name,
                        self.status.error)
            return False
        self._fd = fd
        self.status.error = None
        self.status.timeout_s = self._set_timeout(fd)
        self.status.armed = True
        log.info("%s: watchdog %s armed (timeout %s s)", self.name, self.cfg.device,
                 self.status.timeout_s if self.status.timeout_s is not None else "unknown")
        self.feed()
        return True

    def _set_timeout(self, fd: int) -> int | None:
        # A stand-in (a file, a FIFO) has no ioctls; only a character device is a watchdog.
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", self.cfg.timeout_s))
            got = bytearray(4)
            fcntl.ioctl(fd, WDIOC_GETTIMEOUT, got)
            timeout: int = struct.unpack("i", got)[0]
        except OSError as exc:
            log.warning("%s: could not set the watchdog timeout to %d s: %s", self.name,
                        self.cfg.timeout_s, exc)
            return None
        if timeout != self.cfg.timeout_s:
            log.warning("%s: watchdog timeout is %d s, not the %d s asked for", self.name,
                        timeout, self.cfg.timeout_s)
        return timeout

    def feed(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, b"\0")
            self.status.feeds += 1
        except OSError as exc:
            self.status.error = f"feeding {self.cfg.device} failed: {exc.strerror or exc}"
            log.error("%s: %s", self.name, self.status.error)

    def disarm(self, why: str) -> None:
        """Magic close: ``V`` tells the driver the close is deliberate, so it stops counting."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self.status.armed = False
        try:
            os.write(fd, b"V")
        except OSError as exc:
            log.error("%s: watchdog magic close failed (the host may reset): %s", self.name,
                      exc)
        finally:
            os.close(fd)
        log.info("%s: watchdog disarmed: %s", self.name, why)

    def snapshot(self) -> dict[str, object]:
        s = self.status
        return {"mode": s.mode, "device": s.device, "armed": s.armed, "feeds": s.feeds,
                "timeout_s": s.timeout_s, "error": s.error}
