// Evaluates Unleash client specification cases with the real Node SDK (unleash-client)
// against a live Ferry. argv: URL PLAN.json (PLAN = [{token, spec}]). NODE_PATH names the
// directory unleash-client is installed in. Prints {"cases": N, "failures": [...]}.
const fs = require('fs');
const { startUnleash } = require('unleash-client');

async function main() {
  const [url, planPath] = process.argv.slice(2);
  const plan = JSON.parse(fs.readFileSync(planPath, 'utf8'));
  let cases = 0;
  const failures = [];
  for (const item of plan) {
    const spec = JSON.parse(fs.readFileSync(item.spec, 'utf8'));
    const unleash = await startUnleash({
      url: `${url}/api`,
      appName: 'spec',
      instanceId: `spec-${spec.name}`,
      customHeaders: { Authorization: item.token },
      refreshInterval: 3600 * 1000,
      disableMetrics: true,
      storageProvider: new (require('unleash-client').InMemStorageProvider)(),
    });
    const context = (c) => {
      const copy = { ...c };
      if (copy.currentTime) copy.currentTime = new Date(copy.currentTime);
      return copy;
    };
    for (const c of spec.tests || []) {
      cases += 1;
      const got = unleash.isEnabled(c.toggleName, context(c.context));
      if (got !== c.expectedResult) failures.push(`${spec.name}: ${c.description} (got ${got})`);
    }
    for (const c of spec.variantTests || []) {
      cases += 1;
      const got = unleash.getVariant(c.toggleName, context(c.context));
      const want = c.expectedResult;
      const same = Object.keys(want).every((k) => JSON.stringify(got[k]) === JSON.stringify(want[k]));
      if (!same) failures.push(`${spec.name}: ${c.description} (got ${JSON.stringify(got)})`);
    }
    unleash.destroy();
  }
  console.log(JSON.stringify({ cases, failures }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
