"""Bindings through the chassis API against a real sidecar: a cron input binding runs a handler,
which posts through a bindings.http output binding to a real local HTTP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from chassis import BindingError, Dapr, ServiceSettings
from chassis._bindings import OutputBinding
from chassis.testing import AppProcess, Sidecar, free_port, wait_for
from chassis.testing._processes import write_default_resources

APPS = Path(__file__).parent / "apps"


def binding(name: str, kind: str, **metadata: str) -> str:
    items = "".join(f"\n  - {{name: {key}, value: {json.dumps(value)}}}" for key, value in metadata.items())
    return (
        f"apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n"
        f"spec:\n  type: {kind}\n  version: v1\n  metadata:{items}\n"
    )


class Hook:
    """A real HTTP server the output binding posts to; answers `status` with a small JSON body."""

    def __init__(self) -> None:
        self.posts: list[dict[str, object]] = []
        self.status = 200
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(json.loads(await request.read()))
        return web.json_response({"seen": len(self.posts)}, status=self.status)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    server = Hook()
    app = web.Application()
    app.router.add_post("/hook", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    yield server
    await runner.cleanup()


def resources(folder: Path, hook: Hook, *extra: str) -> Path:
    path = write_default_resources(folder)
    (path / "webhook.yaml").write_text(
        binding("webhook", "bindings.http", url=f"http://127.0.0.1:{hook.port}/hook")
    )
    for index, text in enumerate(extra):
        (path / f"extra-{index}.yaml").write_text(text)
    return path


async def test_an_output_binding_posts_and_returns_the_answer(
    sidecar_factory: Callable[..., Sidecar], hook: Hook, tmp_path: Path
) -> None:
    sidecar = sidecar_factory("poster", resources=[resources(tmp_path / "res", hook)])
    settings = ServiceSettings(
        app_id="poster", dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port
    )
    async with Dapr(settings) as dapr:
        webhook = OutputBinding(dapr, "webhook")
        answer = await webhook.invoke("post", b'{"course": "py-101"}')
        assert json.loads(answer.data) == {"seen": 1}
        assert answer.metadata["statusCode"] == "200"
        assert hook.posts == [{"course": "py-101"}]

        hook.status = 503
        with pytest.raises(BindingError, match="output binding 'webhook' failed on 'post'"):
            await webhook.invoke("post", b"{}")
        with pytest.raises(BindingError, match="output binding 'nowhere'"):
            await OutputBinding(dapr, "nowhere").invoke("post", b"{}")


async def test_a_cron_binding_runs_its_handler_with_retry_and_drop(
    sidecar_factory: Callable[..., Sidecar],
    app_factory: Callable[..., AppProcess],
    hook: Hook,
    tmp_path: Path,
) -> None:
    port = free_port()
    tick = binding("tick", "bindings.cron", schedule="@every 1s")
    sidecar = sidecar_factory("binder", app_port=port, resources=[resources(tmp_path / "res", hook, tick)])
    app_factory("binding_service", app_id="binder", app_port=port, sidecar=sidecar, pythonpath=[APPS])

    def three_posts() -> list[dict[str, object]] | None:
        return hook.posts if len(hook.posts) >= 3 else None

    posts = await wait_for(three_posts, timeout=30, what="three ticks posted")
    # Tick 2 failed once (and counted again on the next fire); tick 3 was dropped.
    assert [post["tick"] for post in posts[:3]] == [1, 2, 4]
    assert all(post["fired"] for post in posts)  # the cron's readTimeUTC reached the handler
