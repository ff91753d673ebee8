"""OpenFeature's Python SDK with the OFREP provider against a live Ferry.
argv: URL TOKEN. Prints the evaluations the test checks, as JSON."""
import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

url, token = sys.argv[1], sys.argv[2]
api.set_provider(OFREPProvider(url, headers_factory=lambda: {"Authorization": f"Bearer {token}"}))
client = api.get_client()
out = {}
for key, ctx in [("beta", "u1"), ("beta", "u9"), ("missing", "u1")]:
    d = client.get_boolean_details(key, False, EvaluationContext(targeting_key=ctx))
    out[f"{key}/{ctx}"] = {
        "value": d.value,
        "variant": d.variant,
        "reason": str(d.reason.value if hasattr(d.reason, "value") else d.reason),
        "error_code": str(d.error_code.value) if d.error_code else None,
    }
d = client.get_string_details("banner", "none", EvaluationContext(targeting_key="u1"))
out["banner"] = {"value": d.value, "variant": d.variant}
d = client.get_object_details("config", {}, EvaluationContext(targeting_key="u1", attributes={"plan": "pro"}))
out["config"] = {"value": d.value, "variant": d.variant}
print(json.dumps(out))
