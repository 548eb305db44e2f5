// Bundles entry.js once per Epic frontend version into dist/ (git-ignored).
// Usage: node build.js   (run `npm ci` first). Called by tests/e2e/conftest.py.
const path = require('path');
const esbuild = require('esbuild');

const ENTRY = path.join(__dirname, 'entry.js');
const OUT = path.join(__dirname, 'dist');
const V57 = '@epicgames-ps/lib-pixelstreamingfrontend-ue5.7';
const BUNDLES = {
    'epic-ue5.7.js': {},
    'epic-ue5.5.js': { [V57]: '@epicgames-ps/lib-pixelstreamingfrontend-ue5.5' }
};

async function main() {
    for (const [name, alias] of Object.entries(BUNDLES)) {
        await esbuild.build({
            entryPoints: [ENTRY],
            outfile: path.join(OUT, name),
            bundle: true,
            format: 'iife',
            platform: 'browser',
            target: 'es2020',
            alias,
            logLevel: 'warning'
        });
    }
}

main().catch((err) => {
    console.error(err);
    process.exit(1);
});
