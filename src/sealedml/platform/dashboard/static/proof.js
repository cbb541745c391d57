// SealedML dashboard: the browser checks a receipt's inclusion proof itself (progressive
// enhancement: the page already shows every step, computed by the server, without JavaScript).
//
// Leaf hash  = SHA-256(0x00 || entry), node hash = SHA-256(0x01 || left || right) (RFC 9162 §2.1.1);
// the path is checked with the algorithm of RFC 9162 §2.1.3.2, counters as BigInt (sizes up to 2^63).
// The tree head's Ed25519 signature is checked with WebCrypto over the bytes the log signs:
// "SealedML-STH/1\0" || log_id (32) || timestamp_ms (u64 BE) || tree_size (u64 BE) || root_hash (32).
// Everything is read from the page when the check runs, so editing a hash on the page makes it fail.
"use strict";

(function () {
  const DOMAIN = new TextEncoder().encode("SealedML-STH/1\u0000");

  function hexToBytes(hex) {
    if (typeof hex !== "string" || !/^(?:[0-9a-f]{2})*$/.test(hex)) {
      throw new Error("a hash on the page is not lowercase hexadecimal");
    }
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i += 1) {
      out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
    }
    return out;
  }

  function bytesToHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function base64ToBytes(text) {
    const binary = atob(text);
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  function equal(a, b) {
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i += 1) diff |= a[i] ^ b[i];
    return diff === 0;
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  function leafHash(entry) {
    return sha256(concat(Uint8Array.of(0), entry));
  }

  function nodeHash(left, right) {
    return sha256(concat(Uint8Array.of(1), left, right));
  }

  // RFC 9162 §2.1.3.2. Resolves to {ok, reason, root}.
  async function verifyInclusion(entry, leafIndex, treeSize, path, root) {
    const index = BigInt(leafIndex);
    const size = BigInt(treeSize);
    for (const p of path) {
      if (p.length !== 32) return { ok: false, reason: "a path hash is not 32 bytes" };
    }
    // 1. The index must be inside the tree.
    if (index < 0n || index >= size) {
      return { ok: false, reason: `leaf ${index} is not in a tree of ${size} entries` };
    }
    // 2.-3.
    let fn = index;
    let sn = size - 1n;
    let r = await leafHash(entry);
    // 4.
    for (const p of path) {
      if (sn === 0n) {
        // a.
        return { ok: false, reason: "the path has more hashes than the tree has levels" };
      }
      if ((fn & 1n) === 1n || fn === sn) {
        // b.
        r = await nodeHash(p, r);
        if ((fn & 1n) === 0n) {
          while (fn !== 0n && (fn & 1n) === 0n) {
            fn >>= 1n;
            sn >>= 1n;
          }
        }
      } else {
        r = await nodeHash(r, p);
      }
      // c.
      fn >>= 1n;
      sn >>= 1n;
    }
    // 5.
    if (sn !== 0n) return { ok: false, reason: "the path is too short", root: bytesToHex(r) };
    if (!equal(r, root)) {
      return { ok: false, reason: `the path leads to root ${bytesToHex(r)}, not the signed root`, root: bytesToHex(r) };
    }
    return { ok: true, root: bytesToHex(r) };
  }

  function treeHeadBytes(logId, timestampMs, treeSize, root) {
    const out = new Uint8Array(DOMAIN.length + 32 + 8 + 8 + 32);
    const view = new DataView(out.buffer);
    out.set(DOMAIN, 0);
    out.set(logId, DOMAIN.length);
    view.setBigUint64(DOMAIN.length + 32, BigInt(timestampMs));
    view.setBigUint64(DOMAIN.length + 40, BigInt(treeSize));
    out.set(root, DOMAIN.length + 48);
    return out;
  }

  // Resolves to {ok, supported, reason}: the log id names the key and the key signed the head.
  async function verifyTreeHead(head) {
    if (head.publicKey.length !== 32 || head.logId.length !== 32 || head.signature.length !== 64) {
      return { ok: false, supported: true, reason: "the tree head's key, log id or signature has the wrong size" };
    }
    if (!equal(await sha256(head.publicKey), head.logId)) {
      return { ok: false, supported: true, reason: "the log id is not the SHA-256 of the log's public key" };
    }
    let key;
    try {
      key = await crypto.subtle.importKey("raw", head.publicKey, { name: "Ed25519" }, false, ["verify"]);
    } catch (error) {
      return { ok: false, supported: false, reason: "this browser cannot check Ed25519 signatures" };
    }
    const message = treeHeadBytes(head.logId, head.timestampMs, head.treeSize, head.root);
    const valid = await crypto.subtle.verify({ name: "Ed25519" }, key, head.signature, message);
    return valid
      ? { ok: true, supported: true }
      : { ok: false, supported: true, reason: "the tree head's signature does not verify under the log key" };
  }

  function report(verdict, state, text) {
    verdict.dataset.state = state;
    verdict.textContent = text;
  }

  async function checkPage() {
    const proof = document.getElementById("proof");
    const verdict = document.getElementById("browser-verdict");
    const button = document.getElementById("recheck");
    if (!proof || !verdict) return;
    report(verdict, "running", "Checking in your browser…");
    try {
      if (!window.crypto || !window.crypto.subtle) {
        throw new Error("the browser offers WebCrypto only on HTTPS or localhost pages");
      }
      const sth = document.getElementById("sth");
      const field = (name) => sth.querySelector(`[data-sth="${name}"]`).textContent.trim();
      const entry = base64ToBytes(proof.dataset.entry);
      const leafIndex = proof.dataset.leafIndex;
      const treeSize = proof.dataset.treeSize;
      if (sth.dataset.treeSize !== treeSize) {
        throw new Error("the proof is for another tree size than the signed head");
      }
      const path = Array.from(proof.querySelectorAll("code.path-hash"), (el) => hexToBytes(el.textContent.trim()));
      const root = hexToBytes(field("root_hash"));
      const inclusion = await verifyInclusion(entry, leafIndex, treeSize, path, root);
      const head = await verifyTreeHead({
        publicKey: hexToBytes(field("public_key")),
        logId: hexToBytes(field("log_id")),
        signature: hexToBytes(field("signature")),
        timestampMs: sth.dataset.timestampMs,
        treeSize: treeSize,
        root: root,
      });
      if (!inclusion.ok) {
        report(verdict, "failed", `NOT verified in your browser: ${inclusion.reason}.`);
      } else if (!head.ok && head.supported) {
        report(verdict, "failed", `NOT verified in your browser: ${head.reason}.`);
      } else if (!head.ok) {
        report(verdict, "inclusion-only",
          `Inclusion verified in your browser (entry #${leafIndex} of ${treeSize}); ${head.reason}.`);
      } else {
        report(verdict, "verified",
          `Verified in your browser: entry #${leafIndex} is in the tree of ${treeSize} entries whose root ` +
          "the log signed (SHA-256 path and Ed25519 signature checked).");
      }
    } catch (error) {
      report(verdict, "failed", `NOT verified in your browser: ${error.message}.`);
    }
    if (button) button.hidden = false;
  }

  window.SealedMLProof = { verifyInclusion, verifyTreeHead, leafHash, nodeHash, hexToBytes, bytesToHex };

  function start() {
    const button = document.getElementById("recheck");
    if (button) button.addEventListener("click", checkPage);
    checkPage();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
