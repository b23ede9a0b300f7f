from .denoising import contrastive_denoising_group  # noqa: F401
from .msda import MSDeformableAttention, deformable_attention_core  # noqa: F401
from .rtdetrv2_decoder import RTDETRv2Decoder, generate_anchors  # noqa: F401
from .dfine_decoder import DFINEDecoder, LQE  # noqa: F401
