"""Feature services: one versioned service per model."""

from __future__ import annotations

from feast import FeatureService, FeatureView

BEHAVIOUR_ENCODER_SERVICE = "behaviour_encoder_v1"


def behaviour_encoder_v1(recent_items: FeatureView) -> FeatureService:
    return FeatureService(
        name=BEHAVIOUR_ENCODER_SERVICE,
        features=[recent_items],
        description="Inputs of the behaviour_encoder model.",
    )
