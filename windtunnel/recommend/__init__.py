"""Recommender: from fitted laws and a target (compute, total parameters, or a fixed model + tokens) to a
compute-optimal RunConfig the trainer loads as is, with HF (BailingMoeV2) and Megatron-LM exports."""

from windtunnel.errors import RecommendError
from windtunnel.recommend.recommend import Recommendation, recommend
from windtunnel.recommend.scale import scale_down
from windtunnel.recommend.targets import Constraints, Target, parse_count

__all__ = [
    "Constraints",
    "Recommendation",
    "RecommendError",
    "Target",
    "parse_count",
    "recommend",
    "scale_down",
]
