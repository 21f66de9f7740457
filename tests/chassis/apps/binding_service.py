"""A service with a cron input binding (`tick`) whose handler posts through an output binding (`webhook`).

Each tick posts {"tick": n, "fired": <the cron's readTimeUTC>}; tick 2 fails once (the handler's
error goes back to the sidecar; the next fire counts as tick 2 again) and tick 3 is dropped.
"""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from chassis import BindingEvent, Drop, Service, ServiceSettings, load_settings


class BindingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BINDER_")


service = Service("binder", load_settings(BindingSettings))
webhook = service.output_binding("webhook")
ticks = 0
failed_once = False


@service.on_binding("tick")
async def on_tick(event: BindingEvent) -> None:
    global ticks, failed_once
    ticks += 1
    if ticks == 2 and not failed_once:
        failed_once, ticks = True, ticks - 1
        raise RuntimeError("the second tick fails once")
    if ticks == 3:
        raise Drop("the third tick is not posted")
    await webhook.invoke("post", f'{{"tick": {ticks}, "fired": "{event.metadata.get("readTimeUTC", "")}"}}')


if __name__ == "__main__":
    service.run()
