"""modelsoak's load generator as a library (`locust -f loadgen/` imports it)."""

import os as _os
import tempfile as _tempfile

# The report's charts use matplotlib, which caches fonts under $HOME unless told
# otherwise; a load generator in a container with a read-only home (Kubernetes)
# must not write there. Set before any module of this package imports matplotlib.
_os.environ.setdefault(
    "MPLCONFIGDIR", _os.path.join(_tempfile.gettempdir(), f"modelsoak-matplotlib-{_os.getuid()}")
)
