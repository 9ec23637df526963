"""Every family file; importing one registers its names.  A new family adds its import here."""
from . import mobilenet_v1, mobilenet_v2, mobilenet_v3  # noqa: F401
from . import shufflenet_v2  # noqa: F401
from . import mobilevit  # noqa: F401
from . import mobilenet_v4  # noqa: F401
from . import segmentation  # noqa: F401  (dense heads on the families above)
from . import detection  # noqa: F401  (SSDLite on the families above)
from . import yolo  # noqa: F401  (YOLO detectors, also on the families above)
