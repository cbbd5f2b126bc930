"""Feature services: one versioned service per model (plus one for monitoring)."""

from __future__ import annotations

from feast import FeatureService, FeatureView

BEHAVIOUR_ENCODER_SERVICE = "behaviour_encoder_v1"
ITEM_TEXT_ENCODER_SERVICE = "item_text_encoder_v1"
MONITORING_SERVICE = "monitoring_v1"


def behaviour_encoder_v1(recent_items: FeatureView) -> FeatureService:
    return FeatureService(
        name=BEHAVIOUR_ENCODER_SERVICE,
        features=[recent_items],
        description="Inputs of the behaviour_encoder model.",
    )


def item_text_encoder_v1(item_content: FeatureView) -> FeatureService:
    return FeatureService(
        name=ITEM_TEXT_ENCODER_SERVICE,
        features=[item_content],
        description="Outputs of the item_text_encoder model, for cold-start items.",
    )


def monitoring_v1(user_profile: FeatureView, item_popularity: FeatureView) -> FeatureService:
    return FeatureService(
        name=MONITORING_SERVICE,
        features=[user_profile, item_popularity],
        description="User and item statistics read by drift and skew checks.",
    )
