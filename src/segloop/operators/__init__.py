"""Node types: one module per type, registered here by name.

A plain dict from type name to operator class (no plug-in framework until outsiders write
plug-ins). Operator modules import their heavy dependencies inside ``run``, so importing
this registry stays cheap.
"""

from __future__ import annotations

from typing import Any

from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.clusters import ClustersOperator
from segloop.operators.clv import ClvOperator
from segloop.operators.lift import LiftOperator
from segloop.operators.propensity import PropensityOperator
from segloop.operators.recommend import RecommendOperator
from segloop.operators.rfm import RfmOperator
from segloop.operators.segment import SegmentOperator
from segloop.operators.segment_source import SegmentSourceOperator
from segloop.operators.sql import SqlOperator

NODE_TYPES: dict[str, type[Operator[Any]]] = {
    op.type_name: op
    for op in (
        SqlOperator,
        RfmOperator,
        ClustersOperator,
        RecommendOperator,
        SegmentOperator,
        ClvOperator,
        PropensityOperator,
        SegmentSourceOperator,
        LiftOperator,
    )
}

__all__ = ["NODE_TYPES", "NodeConfig", "NodeOutput", "Operator", "RunContext"]
