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


def test_handlers_are_module_level_functions():
    """register() only binds handlers to the app: no kopf handler (nor any other function) is
    defined inside it, so each handler can be imported and tested alone."""
    import ast
    from pathlib import Path

    from llama_operator.handlers import endpoint, finetune

    for module in (finetune, endpoint):
        tree = ast.parse(Path(module.__file__).read_text())
        register = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "register")
        nested = [n.name for n in ast.walk(register) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and n is not register]
        assert nested == [], f"{module.__name__}.register defines {nested}"
        for handler in ("reconcile", "resync", "finalize"):
            assert callable(getattr(module, handler)), f"{module.__name__}.{handler}"
