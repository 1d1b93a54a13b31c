#!/usr/bin/python
"""Ansible module: send one signed task callback to the zonefarm API from a worker."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: zonefarm_callback
short_description: Report a zonefarm task event with a signed callback
description:
  - POSTs C({"event", "attempt", ...}) to C(/api/v1/tasks/<id>/callback), signed with
    the node's own key (HMAC-SHA256) by the same helper the API checks with
    (C(module_utils/zonefarm_signing)).
  - The node key and node name come from the node's INI file, which must be mode
    0600; the key is never a module option, so it never reaches Ansible's logs.
options:
  config_path:
    description: The node's INI file (section C([node]) with C(name), C(node_key), C(key_generation), C(api_url)).
    type: path
    required: true
  api_url:
    description: Overrides the C(api_url) of the INI file.
    type: str
  ca_file:
    description:
      - CA file the zone's TLS certificate is verified against; overrides the INI file's C(ca_file).
        Neither means the system's CAs. Verification cannot be turned off.
    type: path
  task_id:
    description: The task the event is about.
    type: int
    required: true
  attempt:
    description: The attempt being reported.
    type: int
    required: true
  event:
    description: The event.
    type: str
    required: true
    choices: [started, progress, log, finished]
  exit_code:
    description: Exit code, for C(finished).
    type: int
  outputs:
    description: Task outputs, for C(finished).
    type: dict
  percent:
    description: Percent done, for C(progress).
    type: float
  data:
    description: Output text, for C(log).
    type: str
  reason:
    description: C(cancelled) or C(timed_out) when a finished task was killed.
    type: str
  timeout:
    description: HTTP timeout in seconds.
    type: float
    default: 30
"""

RETURN = r"""
status:
  description: HTTP status of the answer.
  type: int
  returned: always
response:
  description: The JSON answer (for example C(cancel)).
  type: dict
  returned: success
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.urls import open_url
from ansible.module_utils.zonefarm_secretfile import read_section
from ansible.module_utils.zonefarm_signing import signed_request


def read_node_config(path):
    """Name, key, key generation and API URL; refuses a file others may read, as the runner does."""
    sec = read_section(path, "node", ValueError, what="the node key")
    values = {k: sec.get(k, "").strip() for k in ("name", "node_key", "api_url", "ca_file")}
    for key in ("name", "node_key"):
        if not values[key]:
            raise ValueError(f"{path}: [node] {key} is required")
    values["key_generation"] = sec.getint("key_generation", 0)
    return values


def build_body(params):
    body = {"event": params["event"], "attempt": params["attempt"]}
    for key in ("exit_code", "outputs", "percent", "data", "reason"):
        if params.get(key) is not None:
            body[key] = params[key]
    return json.dumps(body).encode()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            config_path=dict(type="path", required=True),
            api_url=dict(type="str"),
            ca_file=dict(type="path"),
            task_id=dict(type="int", required=True),
            attempt=dict(type="int", required=True),
            event=dict(type="str", required=True, choices=["started", "progress", "log", "finished"]),
            exit_code=dict(type="int"),
            outputs=dict(type="dict"),
            percent=dict(type="float"),
            data=dict(type="str"),
            reason=dict(type="str", choices=["cancelled", "timed_out"]),
            timeout=dict(type="float", default=30),
        ),
        required_if=[("event", "finished", ("exit_code",))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        node = read_node_config(p["config_path"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"config_path: {exc}")
    api_url = (p["api_url"] or node["api_url"]).rstrip("/")
    if not api_url:
        module.fail_json(msg="api_url: not given and not in {}".format(p["config_path"]))
    if module.check_mode:
        module.exit_json(changed=False, status=0)
    # Built (URL, signed path, headers) by the same function the worker's API client uses;
    # open_url is only the transport, since this may run where requests is not installed.
    req = signed_request(node["node_key"], node["name"], "POST", api_url,
                         f"/tasks/{p['task_id']}/callback", build_body(p), generation=node["key_generation"])
    try:
        resp = open_url(req.url, data=req.body, headers=req.headers, method="POST", timeout=p["timeout"],
                        validate_certs=True, ca_path=p["ca_file"] or node["ca_file"] or None)
        status, raw = resp.getcode(), resp.read()
    except HTTPError as exc:
        module.fail_json(msg=f"callback refused: HTTP {exc.code} {exc.read()[:300].decode(errors='replace')}",
                         status=exc.code)
    except (URLError, OSError) as exc:
        module.fail_json(msg=f"callback failed: {exc}", status=0)
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        answer = {}
    module.exit_json(changed=True, status=status, response=answer)


if __name__ == "__main__":
    main()
