"""Evaluates Unleash client specification cases with the real Python SDK (UnleashClient)
against a live Ferry. argv: URL PLAN.json, PLAN = [{"token", "spec"}] (spec: a spec file).
Prints {"cases": N, "failures": [...]} as JSON."""
import json
import sys
import tempfile

from UnleashClient import UnleashClient
from UnleashClient.constants import FEATURES_URL  # noqa: F401 (the SDK polls /client/features)
from UnleashClient.utils import InstanceAllowType

url, plan_path = sys.argv[1], sys.argv[2]
plan = json.load(open(plan_path))
cases, failures = 0, []
for item in plan:
    spec = json.load(open(item["spec"]))
    client = UnleashClient(
        url=url + "/api",
        app_name="spec",
        instance_id="spec-" + spec["name"],
        custom_headers={"Authorization": item["token"]},
        refresh_interval=3600,
        metrics_interval=1,
        cache_directory=tempfile.mkdtemp(),
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    client.initialize_client(fetch_toggles=True)
    if not client.is_initialized:
        failures.append(f"{spec['name']}: the SDK did not initialize")
        continue
    for case in spec.get("tests", []):
        cases += 1
        got = client.is_enabled(case["toggleName"], dict(case["context"]))
        if got != case["expectedResult"]:
            failures.append(f"{spec['name']}: {case['description']} (got {got})")
    for case in spec.get("variantTests", []):
        cases += 1
        got = client.get_variant(case["toggleName"], dict(case["context"]))
        want = case["expectedResult"]
        same = all(got.get(k) == v for k, v in want.items())
        if not same:
            failures.append(f"{spec['name']}: {case['description']} (got {got})")
    client.destroy()
print(json.dumps({"cases": cases, "failures": failures}))
