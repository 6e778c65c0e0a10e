"""The IDM-VTON networks as stock diffusers UNets plus two attention processors (paper Sec. 3.2)."""

import logging as _logging


class _FalseFloat32Warning(_logging.Filter):
    """Drops diffusers' "There are modules in X that should be kept in float32: []" warning,
    which ``ModelMixin.to(dtype)`` logs on every cast even when no module is to be kept in
    float32 (the list is empty): a false alarm on every ``pipe.to(dtype)``."""

    def filter(self, record: _logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("There are modules in") and "float32: []" in message)


# Plain logging, so diffusers is not imported for it; the logger is the one diffusers creates.
_logging.getLogger("diffusers.models.modeling_utils").addFilter(_FalseFloat32Warning())
