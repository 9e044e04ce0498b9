"""What both kinds' handlers share: the backoff and the event router."""

import asyncio

from llama_operator.handlers.app import App
from llama_operator.handlers.kube import MAX_RETRY_DELAY, backoff


def test_both_kinds_back_off_the_same_way():
    assert [backoff(15.0, r) for r in range(6)] == [15.0, 30.0, 60.0, 120.0, 240.0, 300.0]
    assert backoff(0.5, 10_000) == MAX_RETRY_DELAY  # no overflow however long it has been failing


def test_the_app_routes_each_event_to_the_kind_of_its_detail_type():
    seen = []

    async def training(event):
        seen.append(("training", event["id"]))

    app = App(settings=None, sagemaker=None, s3=None, routes={"SageMaker Training Job State Change": training})
    asyncio.run(app.on_event({"id": 1, "detail-type": "SageMaker Training Job State Change", "detail": {}}))
    asyncio.run(app.on_event({"id": 2, "detail-type": "SageMaker Endpoint Deployment State Change", "detail": {}}))
    assert seen == [("training", 1)]  # an unsubscribed detail-type is left alone
