// Compile CivicRegistry.sol with the pinned solc (package-lock.json) through standard-JSON input,
// evmVersion "paris" (no PUSH0, so older Besu / FISCO-style chains run it), and write the ABI and
// the creation bytecode to build/. `node build.js --check` rebuilds in memory and fails if the
// committed files differ: the Rust crate embeds them, so cargo never needs Node.
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const dir = __dirname;
const source = 'CivicRegistry.sol';
const input = {
  language: 'Solidity',
  sources: { [source]: { content: fs.readFileSync(path.join(dir, source), 'utf8') } },
  settings: {
    evmVersion: 'paris',
    optimizer: { enabled: true, runs: 200 },
    // No metadata hash: the bytecode depends on the source and settings only, not on paths.
    metadata: { bytecodeHash: 'none', appendCBOR: false },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
  },
};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
// Warnings fail the build too: the committed contract compiles clean.
const errors = out.errors || [];
for (const e of out.errors || []) process.stderr.write(e.formattedMessage + '\n');
if (errors.length) process.exit(1);
const c = out.contracts[source].CivicRegistry;
const files = {
  'CivicRegistry.abi.json': JSON.stringify(c.abi, null, 2) + '\n',
  'CivicRegistry.bin': c.evm.bytecode.object + '\n',
};
const build = path.join(dir, 'build');
if (process.argv.includes('--check')) {
  let bad = 0;
  for (const [name, text] of Object.entries(files)) {
    const p = path.join(build, name);
    const have = fs.existsSync(p) ? fs.readFileSync(p, 'utf8') : null;
    if (have !== text) {
      process.stderr.write(`build/${name} does not match a rebuild with solc ${solc.version()}: run npm run build\n`);
      bad++;
    }
  }
  if (bad) process.exit(1);
  console.log(`contract artifacts match a rebuild with solc ${solc.version()}`);
} else {
  fs.mkdirSync(build, { recursive: true });
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(build, name), text);
  console.log(`wrote build/ with solc ${solc.version()} (${c.evm.bytecode.object.length / 2} bytes)`);
}
