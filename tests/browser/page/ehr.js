// A minimal EHR front end, doing in a real browser what an EHR (or the CDS Hooks sandbox)
// does with a CDS service:
//   1. discovery (GET {service base}/cds-services), picking the service of the configured hook;
//   2. prefetch read from the FHIR server: reads with GET, searches with form-encoded
//      POST /{type}/_search as the sandbox does;
//   3. the hook call, with a JWT signed in the browser (ES384, WebCrypto) for the exact URL;
//   4. the cards rendered: indicator, summary, markdown detail, source, links, suggestions and
//      override reasons; a suggestion click posts "accepted" feedback, Dismiss with a reason
//      posts "overridden" feedback; a `smart` link launches its app as the sandbox does.
// Configuration is the URL fragment: JSON {discovery, fhirServer, patientId, hook, draftOrder,
// issuer, kid, privateJwk}. Failures are reported with console.error (the test fails on any).

const INDICATOR_ORDER = { critical: 0, warning: 1, info: 2 };
const config = JSON.parse(decodeURIComponent(window.location.hash.slice(1)));
const statusLine = document.getElementById('status');

function base64url(bytes) {
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

const jsonBytes = (value) => new TextEncoder().encode(JSON.stringify(value));

const signingKey = crypto.subtle.importKey(
  'jwk',
  { kty: 'EC', crv: 'P-384', x: config.privateJwk.x, y: config.privateJwk.y, d: config.privateJwk.d },
  { name: 'ECDSA', namedCurve: 'P-384' },
  false,
  ['sign'],
);

/** A CDS Hooks client JWT for one call: audience = the exact URL, single-use jti. */
async function bearerFor(url) {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(jsonBytes({ alg: 'ES384', typ: 'JWT', kid: config.kid }));
  const claims = base64url(jsonBytes({
    iss: config.issuer, aud: url, iat: now, exp: now + 300, jti: crypto.randomUUID(),
  }));
  const input = `${header}.${claims}`;
  const signature = await crypto.subtle.sign(
    { name: 'ECDSA', hash: 'SHA-384' }, await signingKey, new TextEncoder().encode(input));
  return `Bearer ${input}.${base64url(new Uint8Array(signature))}`;
}

async function callService(url, body) {
  const init = { headers: { Accept: 'application/json', Authorization: await bearerFor(url) } };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) {
    throw new Error(`${init.method ?? 'GET'} ${url}: HTTP ${response.status} ${await response.text()}`);
  }
  return response.json();
}

/** One prefetch template, its tokens filled, read from the FHIR server. */
async function prefetchOne(template, context) {
  const filled = template
    .replaceAll('{{context.patientId}}', context.patientId)
    .replaceAll('{{context.userId}}', context.userId);
  const [path, query] = filled.split('?');
  const headers = { Accept: 'application/fhir+json' };
  let response;
  if (query === undefined) {
    response = await fetch(`${config.fhirServer}/${path}`, { headers });
  } else {
    response = await fetch(`${config.fhirServer}/${path}/_search`, {
      method: 'POST',
      headers: { ...headers, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(query).toString(),
    });
  }
  if (!response.ok) {
    throw new Error(`prefetch ${path}: HTTP ${response.status} ${await response.text()}`);
  }
  return response.json();
}

function hookContext() {
  const context = { patientId: config.patientId, userId: 'Practitioner/test-ehr' };
  if (config.hook === 'order-select' || config.hook === 'order-sign') {
    const draft = {
      resourceType: 'MedicationRequest', id: 'draft-1', status: 'draft', intent: 'order',
      subject: { reference: `Patient/${config.patientId}` },
      authoredOn: new Date().toISOString().slice(0, 10),
      medicationCodeableConcept: config.draftOrder,
    };
    context.draftOrders = { resourceType: 'Bundle', type: 'collection', entry: [{ resource: draft }] };
    if (config.hook === 'order-select') context.selections = ['MedicationRequest/draft-1'];
  }
  return context;
}

// -- markdown (the subset cards use: paragraphs, lists, bold, italics, links, escapes) ------

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function inline(text) {
  const escapes = [];
  let html = text.replace(/\\([\\`*_{}[\]()#+\-.!|>~])/g, (_, c) => {
    escapes.push(c);
    return `\u0000${escapes.length - 1}\u0000`;
  });
  html = escapeHtml(html)
    .replace(/\*\*(.+?)\*\*/g, '<strong>$1</strong>')
    .replace(/(^|[^*])\*([^*]+)\*/g, '$1<em>$2</em>')
    .replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<a href="$2" target="_blank" rel="noopener">$1</a>');
  return html.replace(/\u0000(\d+)\u0000/g, (_, i) => escapeHtml(escapes[Number(i)]));
}

function renderMarkdown(markdown) {
  const blocks = [];
  let list = null;
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) blocks.push(`<p>${inline(paragraph.join(' '))}</p>`);
    paragraph = [];
    if (list) blocks.push(`<ul>${list.map((item) => `<li>${inline(item)}</li>`).join('')}</ul>`);
    list = null;
  };
  for (const line of markdown.split('\n')) {
    const item = line.match(/^\s*[-*]\s+(.*)$/);
    if (item) {
      if (paragraph.length) flush();
      (list ??= []).push(item[1]);
    } else if (!line.trim()) {
      flush();
    } else {
      if (list) flush();
      paragraph.push(line.trim());
    }
  }
  flush();
  return blocks.join('');
}

// -- cards ------------------------------------------------------------------------------

function element(tag, attributes = {}, text = undefined) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function sendFeedback(feedbackUrl, entry, cardNode, outcome) {
  await callService(feedbackUrl, { feedback: [{ ...entry, outcome, outcomeTimestamp: new Date().toISOString() }] });
  cardNode.dataset.feedback = outcome;
  cardNode.querySelector('.actions').append(element('span', { class: 'feedback' }, `Feedback sent: ${outcome}`));
}

function renderCard(card, feedbackUrl) {
  const node = element('section', {
    class: 'card', 'data-uuid': card.uuid ?? '', 'data-indicator': card.indicator,
    'data-topic': card.source?.topic?.code ?? '',
  });
  node.append(element('div', { class: 'indicator' }, card.indicator));
  node.append(element('div', { class: 'summary' }, card.summary));
  const detail = element('div', { class: 'detail' });
  detail.innerHTML = renderMarkdown(card.detail ?? '');
  node.append(detail);
  const source = element('div', { class: 'source' }, 'Source: ');
  source.append(card.source.url
    ? element('a', { href: card.source.url, target: '_blank', rel: 'noopener' }, card.source.label)
    : card.source.label);
  node.append(source);

  const actions = element('div', { class: 'actions' });
  for (const suggestion of card.suggestions ?? []) {
    const button = element('button', { class: 'suggestion', 'data-suggestion': suggestion.uuid ?? '' }, suggestion.label);
    button.addEventListener('click', () => sendFeedback(
      feedbackUrl, { card: card.uuid, acceptedSuggestions: [{ id: suggestion.uuid }] }, node, 'accepted',
    ).catch(reportError));
    actions.append(button);
  }
  for (const link of card.links ?? []) {
    if (link.type === 'smart') {
      const button = element('button', { class: 'smart-link' }, link.label);
      button.addEventListener('click', () => launchSmart(link).catch(reportError));
      actions.append(button);
    } else {
      actions.append(element('a', { class: 'link', href: link.url, target: '_blank', rel: 'noopener' }, link.label));
    }
  }
  if (card.overrideReasons?.length) {
    const select = element('select', { class: 'override-reason', 'aria-label': 'Override reason' });
    select.append(element('option', { value: '' }, 'Dismiss reason…'));
    for (const reason of card.overrideReasons) {
      select.append(element('option', { value: reason.code, 'data-system': reason.system }, reason.display));
    }
    const dismiss = element('button', { class: 'dismiss' }, 'Dismiss');
    dismiss.addEventListener('click', () => {
      const chosen = card.overrideReasons.find((reason) => reason.code === select.value);
      const entry = { card: card.uuid };
      if (chosen) entry.overrideReason = { reason: { system: chosen.system, code: chosen.code } };
      sendFeedback(feedbackUrl, entry, node, 'overridden').catch(reportError);
    });
    actions.append(select, dismiss);
  }
  node.append(actions);
  return node;
}

/**
 * A `smart` link launched as the CDS Hooks sandbox launches one: the launch context is
 * registered with the FHIR server (POST {fhirServer}/_services/smart/Launch -> launch_id),
 * then the app opens at `url?launch=<launch_id>&iss=<fhirServer>`.
 */
async function launchSmart(link) {
  const response = await fetch(`${config.fhirServer}/_services/smart/Launch`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      launchUrl: link.url,
      parameters: { patient: config.patientId, appContext: link.appContext },
    }),
  });
  if (!response.ok) throw new Error(`SMART launch: HTTP ${response.status}`);
  const { launch_id: launchId } = await response.json();
  window.open(`${link.url}?launch=${encodeURIComponent(launchId)}&iss=${encodeURIComponent(config.fhirServer)}`, '_blank');
}

function reportError(error) {
  statusLine.dataset.state = 'error';
  statusLine.textContent = `Error: ${error.message}`;
  console.error(error.message);
}

async function main() {
  document.getElementById('context').textContent =
    `Patient ${config.patientId} · hook ${config.hook} · FHIR ${config.fhirServer}`;
  const discovery = await callService(config.discovery);
  const service = discovery.services.find((candidate) => candidate.hook === config.hook);
  if (!service) throw new Error(`no service for ${config.hook}`);
  const context = hookContext();
  const prefetch = {};
  await Promise.all(Object.entries(service.prefetch ?? {}).map(async ([key, template]) => {
    prefetch[key] = await prefetchOne(template, context);
  }));
  const serviceUrl = `${config.discovery}/${service.id}`;
  const response = await callService(serviceUrl, {
    hookInstance: crypto.randomUUID(), hook: config.hook, fhirServer: config.fhirServer, context, prefetch,
  });
  const cards = [...response.cards].sort(
    (a, b) => INDICATOR_ORDER[a.indicator] - INDICATOR_ORDER[b.indicator]);
  const container = document.getElementById('cards');
  for (const card of cards) container.append(renderCard(card, `${serviceUrl}/feedback`));
  if (!cards.length) container.append(element('p', { class: 'empty' }, 'No cards.'));
  statusLine.dataset.state = 'done';
  statusLine.textContent = `${cards.length} card(s) from ${service.id}`;
}

main().catch(reportError);
