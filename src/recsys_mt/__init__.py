"""recsys_mt: multi-objective e-commerce recommendation in PyTorch.

Pluggable encoders feed a multi-task head that predicts a purchase funnel (CTR → CVR →
repurchase); scores are fused and re-ranked for diversity. See the docs for a tour.
"""

__version__ = "0.1.0"

from .data import (  # noqa: E402
    OOV_ID,
    PAD_ID,
    BatchLoader,
    Dense,
    FunnelStats,
    OOVWarning,
    ParquetSource,
    Schema,
    SchemaError,
    Sequence,
    Sparse,
    TensorFrame,
    Text,
    Vector,
)
from .encoders import (  # noqa: E402
    BertTextTower,
    ConcatFusion,
    DenseEncoder,
    Encoder,
    Fusion,
    IDEmbedding,
    TargetAttention,
    VectorEncoder,
)
from .losses import Balancer, StaticWeights, UncertaintyWeighting  # noqa: E402
from .model import CheckpointError, MultiTaskModel  # noqa: E402
from .registry import register  # noqa: E402
from .rerank import (  # noqa: E402
    DPP,
    MMR,
    CallableFusion,
    CategoryCoverage,
    Objective,
    ParetoChoice,
    ParetoInputs,
    ParetoResult,
    WeightedProduct,
    WeightedSum,
    load_fusion,
    pareto_inputs_from_frame,
    pareto_search,
)
from .rerank import Fusion as ScoreFusion  # noqa: E402
from .serving import Recommender  # noqa: E402
from .tasks import AITM, PLE, Head, MMoE, SharedBottom, Task  # noqa: E402
from .train import (  # noqa: E402
    Callback,  # noqa: E402
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    TensorBoardLogger,
    Trainer,
)

__all__ = [
    "BertTextTower",
    "DPP",
    "MMR",
    "CSVLogger",
    "Callback",
    "CallableFusion",
    "CategoryCoverage",
    "EarlyStopping",
    "ModelCheckpoint",
    "Recommender",
    "ScoreFusion",
    "TensorBoardLogger",
    "Trainer",
    "WeightedProduct",
    "WeightedSum",
    "AITM",
    "OOV_ID",
    "PAD_ID",
    "PLE",
    "Balancer",
    "BatchLoader",
    "CheckpointError",
    "ConcatFusion",
    "Dense",
    "DenseEncoder",
    "Encoder",
    "FunnelStats",
    "Fusion",
    "Head",
    "IDEmbedding",
    "MMoE",
    "MultiTaskModel",
    "OOVWarning",
    "ParquetSource",
    "Schema",
    "SchemaError",
    "Sequence",
    "SharedBottom",
    "Sparse",
    "StaticWeights",
    "TargetAttention",
    "Task",
    "TensorFrame",
    "Text",
    "UncertaintyWeighting",
    "Vector",
    "VectorEncoder",
    "Objective",
    "ParetoChoice",
    "ParetoInputs",
    "ParetoResult",
    "load_fusion",
    "pareto_inputs_from_frame",
    "pareto_search",
    "__version__",
    "register",
]
