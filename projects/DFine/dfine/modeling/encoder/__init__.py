from .hybrid_encoder import CCFF_VERSIONS, HybridEncoder, RepVggBlock, build_2d_sincos_position_embedding  # noqa: F401
from .lite_encoder import LiteEncoder  # noqa: F401
from .deformable_encoder import DeformableEncoder, DeformableEncoderLayer  # noqa: F401
from .dab_encoder import DabEncoder, DabEncoderLayer  # noqa: F401
