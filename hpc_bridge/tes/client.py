"""py-tes, adapted to one hpc-bridge server: how the CLI reaches the TES API."""

from __future__ import annotations

from typing import Any

import requests
import tes
from tes.client import send_request
from tes.utils import unmarshal

DEFAULT_URL = "http://127.0.0.1:8000"
API_PATH = "/ga4gh/tes/v1"
WES_PATH = "/ga4gh/wes/v1"


class BridgeClient(tes.HTTPClient):
    """`tes.HTTPClient` pinned to /ga4gh/tes/v1, plus the list filters py-tes does not send.

    py-tes retries a request on /v1 and / after a 404 and reports the *last* answer, so "task 'x'
    not found" would surface as a generic "URL not found"; one base URL keeps the server's own
    message. The URL may be given with or without the API path (`serve` prints it with), or with the
    WES one (the form `hpc-bridge-cwl-runner` and `hpc-bridge run` also take).
    """

    def __attrs_post_init__(self) -> None:
        self.urls = [self.url.rstrip("/").removesuffix(API_PATH).removesuffix(WES_PATH) + API_PATH]

    def find_tasks(self, *, all_pages: bool, view: str = "BASIC", state: str | None = None,
                   name_prefix: str | None = None, tags: dict[str, str] | None = None,
                   ) -> tuple[list[tes.Task], bool]:
        """Tasks newest first, following next_page_token if `all_pages`; True if pages were left.

        A tag with an empty value matches every task that has the key.
        """
        tags = tags or {}
        params: dict[str, Any] = {"view": view, "state": state, "name_prefix": name_prefix,
                                  "tag_key": list(tags), "tag_value": list(tags.values())}
        tasks: list[tes.Task] = []
        while True:
            response = send_request([f"{self.urls[0]}/tasks"],
                                    kwargs_requests=self._request_params(params=params))
            page = unmarshal(response.json(), tes.ListTasksResponse)
            tasks += page.tasks or []
            if not (page.next_page_token and all_pages):
                return tasks, bool(page.next_page_token)
            params["page_token"] = page.next_page_token


def error_message(exc: requests.RequestException, url: str) -> str:
    """What went wrong, for a person: the server's GA4GH `msg` when there is one."""
    response = exc.response
    if response is None:
        if isinstance(exc, requests.HTTPError):  # how py-tes reports a connection that failed
            return f"no answer from the server at {url} (is `hpc-bridge serve` running there?)"
        return f"{exc} (from {url})"
    try:
        msg = response.json()["msg"]
    except (ValueError, KeyError, TypeError):
        msg = response.reason or "no error message"
    return f"{msg} (HTTP {response.status_code} from {url})"
