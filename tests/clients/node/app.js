'use strict';
// The transit scenario of tests/clients/README.md, written against
// node-vault as an app developer would: node-vault has helpers for only part
// of transit (encrypt, decrypt, rewrap, keys), with the mount fixed to
// `transit`, so apps call its generic `write` and `read` on transit's paths,
// as its README shows for any secrets engine.

const vault = require('node-vault')({
  apiVersion: 'v1',
  endpoint: process.env.VAULT_ADDR,
  token: process.env.VAULT_TOKEN,
});

const mount = process.env.TRANSIT_MOUNT || 'transit';
const plaintext = b64('the quick brown fox');

function b64(text) {
  return Buffer.from(text).toString('base64');
}

function check(condition, why) {
  if (!condition) throw new Error(why);
}

async function encryptDecrypt(state) {
  const { data } = await vault.write(`${mount}/encrypt/aes`, { plaintext });
  check(data.ciphertext.startsWith('vault:v1:'), `ciphertext ${data.ciphertext}`);
  state.ciphertext = data.ciphertext;
  const back = await vault.write(`${mount}/decrypt/aes`, { ciphertext: data.ciphertext });
  check(back.data.plaintext === plaintext, `decrypted ${back.data.plaintext}`);
}

async function batch() {
  const plaintexts = ['one', 'two', 'three'].map(b64);
  const sealed = (await vault.write(`${mount}/encrypt/aes`, {
    batch_input: plaintexts.map((p) => ({ plaintext: p })),
  })).data.batch_results;
  check(sealed.length === 3, `${sealed.length} encrypt results`);
  check(sealed.every((r) => !r.error && r.ciphertext.startsWith('vault:v1:')),
    `encrypt results ${JSON.stringify(sealed)}`);
  const opened = (await vault.write(`${mount}/decrypt/aes`, {
    batch_input: sealed.map((r) => ({ ciphertext: r.ciphertext })),
  })).data.batch_results;
  check(JSON.stringify(opened.map((r) => r.plaintext)) === JSON.stringify(plaintexts),
    `decrypt results ${JSON.stringify(opened)}`);
}

function signVerify(key, options = {}) {
  return async () => {
    const message = b64('signed message');
    const other = b64('another message');
    const { signature } = (await vault.write(`${mount}/sign/${key}/sha2-256`, {
      input: message, ...options,
    })).data;
    check(signature.startsWith('vault:v1:'), `signature ${signature}`);
    for (const [input, valid] of [[message, true], [other, false]]) {
      const answer = (await vault.write(`${mount}/verify/${key}/sha2-256`, {
        input, signature, ...options,
      })).data;
      check(answer.valid === valid, `verify of ${input} said ${JSON.stringify(answer)}`);
    }
  };
}

async function hmac() {
  const message = b64("mac'd message");
  const other = b64('another message');
  const mac = (await vault.write(`${mount}/hmac/mac/sha2-256`, { input: message })).data.hmac;
  check(mac.startsWith('vault:v1:'), `hmac ${mac}`);
  for (const [input, valid] of [[message, true], [other, false]]) {
    const answer = (await vault.write(`${mount}/verify/mac/sha2-256`, { input, hmac: mac })).data;
    check(answer.valid === valid, `verify of ${input} said ${JSON.stringify(answer)}`);
  }
}

async function datakey() {
  const key = (await vault.write(`${mount}/datakey/plaintext/aes`, {})).data;
  check(Buffer.from(key.plaintext, 'base64').length === 32, `plaintext key ${key.plaintext}`);
  check(key.ciphertext.startsWith('vault:v1:'), `ciphertext ${key.ciphertext}`);
  const back = await vault.write(`${mount}/decrypt/aes`, { ciphertext: key.ciphertext });
  check(back.data.plaintext === key.plaintext, 'the ciphertext does not decrypt to the key');
  const wrapped = (await vault.write(`${mount}/datakey/wrapped/aes`, {})).data;
  check(wrapped.ciphertext.startsWith('vault:v1:'), `ciphertext ${wrapped.ciphertext}`);
  check(!wrapped.plaintext, `wrapped key has a plaintext: ${JSON.stringify(wrapped)}`);
}

async function rotateRewrap(state) {
  await vault.write(`${mount}/keys/aes/rotate`, {});
  const latest = (await vault.read(`${mount}/keys/aes`)).data.latest_version;
  check(latest === 2, `latest_version ${latest}`);
  const rewrapped = (await vault.write(`${mount}/rewrap/aes`, { ciphertext: state.ciphertext }))
    .data.ciphertext;
  check(rewrapped.startsWith('vault:v2:'), `rewrapped ${rewrapped}`);
  const back = await vault.write(`${mount}/decrypt/aes`, { ciphertext: rewrapped });
  check(back.data.plaintext === plaintext, `decrypted ${back.data.plaintext}`);
}

async function readKey() {
  const key = (await vault.read(`${mount}/keys/ec`)).data;
  check(key.type === 'ecdsa-p256', `type ${key.type}`);
  const publicKey = key.keys['1'].public_key;
  check(publicKey.startsWith('-----BEGIN PUBLIC KEY-----'), `public_key ${publicKey}`);
}

async function denied() {
  try {
    await vault.write(`${mount}/encrypt/secret`, { plaintext });
  } catch (err) {
    if (err.response && err.response.statusCode === 403) return;
    throw err;
  }
  throw new Error('encrypt with `secret` was not refused with 403');
}

const steps = [
  ['encrypt-decrypt', encryptDecrypt],
  ['batch', batch],
  ['sign-verify-ecdsa', signVerify('ec')],
  ['sign-verify-rsa-pss', signVerify('rsa', { signature_algorithm: 'pss' })],
  ['sign-verify-rsa-pkcs1v15', signVerify('rsa', { signature_algorithm: 'pkcs1v15' })],
  ['hmac', hmac],
  ['datakey', datakey],
  ['rotate-rewrap', rotateRewrap],
  ['read-key', readKey],
  ['denied', denied],
];

async function main() {
  const state = {};
  for (const [name, step] of steps) {
    try {
      await step(state);
    } catch (err) {
      const status = err.response ? ` (HTTP ${err.response.statusCode})` : '';
      console.log(`FAIL: ${name}: ${err.message}${status}`);
      return 1;
    }
    console.log(`ok: ${name}`);
  }
  return 0;
}

main().then((code) => { process.exitCode = code; });
