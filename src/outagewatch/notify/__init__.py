"""Notifications: the channel seam (``channel.py``), the outbox drainer (``drainer.py``) and
the channels (``smtp.py``). Adding a channel is a module implementing ``Channel`` and one
line where ``app.py`` builds the channels."""

from outagewatch.notify.channel import Channel, Deferred, Delivered, Delivery, Refused
from outagewatch.notify.drainer import Drainer
from outagewatch.notify.smtp import SmtpChannel

__all__ = ["Channel", "Deferred", "Delivered", "Delivery", "Drainer", "Refused", "SmtpChannel"]
