from .box_ops import *  # noqa: F401,F403
from .common import *  # noqa: F401,F403
from .position_encoding import SinePositionEncoding, sine_box_embedding  # noqa: F401
