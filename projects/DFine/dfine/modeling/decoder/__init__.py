from .outputs import Branch, DecoderOutput, DenoisingPart, DistributionGeometry, Predictions, Proposals  # noqa: F401
from .msda import MSDeformableAttention, deformable_attention_core  # noqa: F401
from .input_projection import InputProjection, Memory  # noqa: F401
from .query_selection import EncoderTopK, LearnedAnchors, generate_anchors  # noqa: F401
from .layer import DeformableDecoderLayer  # noqa: F401
from .heads import LQE, BoxHead, BoxPositionEmbedding, ClassHead, SineBoxPositionEmbedding  # noqa: F401
from .denoising import (  # noqa: F401
    ContrastiveDenoising,
    DinoContrastiveDenoising,
    DnDetrDenoising,
    contrastive_denoising_group,
)  # noqa: F401
from .decoder import DetrDecoder  # noqa: F401
from .dab_decoder import ConditionalAttention, DabDecoderLayer, DabDetrDecoder  # noqa: F401
