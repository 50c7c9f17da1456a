"""The playground: ``GET /`` in a browser, one page with no build step for the served model's task.

Text generation (translation, text-to-text, decoder-only) streams from ``/generate_stream`` with TGI's token
details: each token is coloured by its probability, and a click shows the most likely tokens at that position.
Speech uploads a file or a microphone recording to ``/v1/audio/transcriptions`` (segments and words), or
streams the microphone to ``/v1/audio/live`` and shows the words as they are confirmed. An
embedding model compares sentences (``/similarity``), a classifier labels them (``/predict``). The page shows
each request's latency and links ``/metrics``, ``/info`` and ``/docs``.
"""

from __future__ import annotations

import html
import json

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.3rem; margin-bottom: .2rem; } .sub { color: #666; margin-top: 0; }
textarea { width: 100%; min-height: 6rem; font: inherit; padding: .5rem; box-sizing: border-box; }
button { font: inherit; padding: .4rem 1rem; margin: .5rem .5rem .5rem 0; cursor: pointer; }
#output { border: 1px solid #ccc; border-radius: 4px; padding: .6rem; min-height: 3rem; white-space: pre-wrap; }
.tok { cursor: pointer; border-radius: 2px; } .tok.picked { outline: 2px solid #333; }
#alternatives table, #result table { border-collapse: collapse; margin-top: .5rem; }
td, th { border: 1px solid #ddd; padding: .2rem .6rem; text-align: left; }
#status { color: #555; margin: .4rem 0; } .error { color: #b00020; }
footer { margin-top: 2rem; color: #777; font-size: .9rem; } footer a { margin-right: 1rem; }
"""

_TEXT_SCRIPT = """
const out = document.getElementById('output'), alts = document.getElementById('alternatives');
const statusLine = document.getElementById('status');
function colour(p) { return `hsl(${Math.round(120 * p)}, 70%, 85%)`; }
function showAlternatives(span, tok) {
  document.querySelectorAll('.tok.picked').forEach(s => s.classList.remove('picked'));
  span.classList.add('picked');
  const rows = (tok.top_tokens || []).map(t =>
    `<tr><td>${escapeHtml(JSON.stringify(t.text))}</td><td>${(100 * Math.exp(t.logprob)).toFixed(1)}%</td></tr>`);
  alts.innerHTML = `<b>At this position</b> (chosen: ${escapeHtml(JSON.stringify(tok.text))}, ` +
    `${(100 * Math.exp(tok.logprob)).toFixed(1)}%)<table><tr><th>token</th><th>probability</th></tr>` +
    rows.join('') + '</table>';
}
function escapeHtml(s) { const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
async function run() {
  out.textContent = ''; alts.textContent = ''; statusLine.textContent = 'running...';
  const body = {inputs: document.getElementById('input').value,
                parameters: {details: true, top_n_tokens: 5, num_beams: 1,
                             max_new_tokens: parseInt(document.getElementById('max').value)}};
  const start = performance.now(); let first = null, count = 0;
  const response = await fetch('generate_stream', {method: 'POST', headers: {'content-type': 'application/json'},
                                                   body: JSON.stringify(body)});
  if (!response.ok) { const e = await response.json(); statusLine.innerHTML = `<span class="error">${escapeHtml(e.error)}</span>`; return; }
  const reader = response.body.getReader(), decoder = new TextDecoder(); let buffer = '';
  while (true) {
    const {value, done} = await reader.read(); if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut; while ((cut = buffer.indexOf('\\n\\n')) >= 0) {
      const line = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      if (!line.startsWith('data: ')) continue;
      const event = JSON.parse(line.slice(6));
      if (event.error) { statusLine.innerHTML = `<span class="error">${escapeHtml(event.error)}</span>`; return; }
      if (event.token) {
        if (first === null) first = performance.now() - start;
        count += 1;
        const tok = Object.assign({}, event.token, {top_tokens: event.top_tokens});
        const span = document.createElement('span');
        span.className = 'tok'; span.textContent = tok.text;
        if (tok.logprob !== undefined) span.style.background = colour(Math.exp(tok.logprob));
        span.onclick = () => showAlternatives(span, tok);
        out.appendChild(span);
      }
      if (event.generated_text !== undefined) {
        out.dataset.text = event.generated_text;
        const total = performance.now() - start;
        statusLine.textContent = `${count} tokens, first after ${Math.round(first || total)} ms, ` +
          `done after ${Math.round(total)} ms (${event.finish_reason})`;
      }
    }
  }
}
document.getElementById('run').onclick = run;
"""

_SPEECH_SCRIPT = """
const statusLine = document.getElementById('status'), result = document.getElementById('result');
function escapeHtml(s) { const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
async function send(blob, name) {
  statusLine.textContent = 'transcribing...'; result.textContent = '';
  const form = new FormData(); form.append('file', blob, name);
  form.append('response_format', 'verbose_json');
  form.append('timestamp_granularities[]', 'segment'); form.append('timestamp_granularities[]', 'word');
  const start = performance.now();
  const response = await fetch('v1/audio/transcriptions', {method: 'POST', body: form});
  const body = await response.json();
  if (!response.ok) { statusLine.innerHTML = `<span class="error">${escapeHtml(body.error)}</span>`; return; }
  statusLine.textContent = `${body.duration.toFixed(1)} s of audio in ${Math.round(performance.now() - start)} ms`;
  const rows = body.segments.map(s => `<tr><td>${s.start.toFixed(2)}-${s.end.toFixed(2)}</td><td>${escapeHtml(s.text)}</td></tr>`);
  result.innerHTML = `<p id="text">${escapeHtml(body.text)}</p><table><tr><th>time (s)</th><th>segment</th></tr>` +
    rows.join('') + `</table><p>${(body.words || []).length} words with timestamps</p>`;
}
document.getElementById('run').onclick = () => {
  const file = document.getElementById('file').files[0];
  if (file) send(file, file.name); else statusLine.textContent = 'choose a file first';
};
let recorder = null, chunks = [];
document.getElementById('mic').onclick = async (e) => {
  if (recorder) { recorder.stop(); return; }
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  recorder = new MediaRecorder(stream); chunks = [];
  recorder.ondataavailable = ev => chunks.push(ev.data);
  recorder.onstop = () => { stream.getTracks().forEach(t => t.stop()); recorder = null; e.target.textContent = 'Record';
                            send(new Blob(chunks, {type: chunks[0].type}), 'recording.webm'); };
  recorder.start(); e.target.textContent = 'Stop';
};
// live: microphone samples (16 kHz PCM16) over the WebSocket of /v1/audio/live, words shown as they are confirmed
let live = null;
document.getElementById('live').onclick = async (e) => {
  if (live) { live.stop(); return; }
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const context = new AudioContext({sampleRate: 16000});
  const source = context.createMediaStreamSource(stream), node = context.createScriptProcessor(4096, 1, 1);
  const url = new URL('v1/audio/live', location.href); url.protocol = url.protocol.replace('http', 'ws');
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  let confirmed = '';
  result.innerHTML = '<p id="livetext"><span id="confirmed"></span><span id="partial" class="sub"></span></p>';
  statusLine.textContent = 'live: connecting...';
  node.onaudioprocess = ev => {
    if (socket.readyState !== WebSocket.OPEN) return;
    const x = ev.inputBuffer.getChannelData(0), pcm = new Int16Array(x.length);
    for (let i = 0; i < x.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(x[i] * 32767)));
    socket.send(pcm.buffer);
  };
  socket.onmessage = ev => {
    const m = JSON.parse(ev.data);
    if (m.type === 'ready') statusLine.textContent = 'live: listening (16 kHz)';
    if (m.type === 'final') { confirmed += m.text; document.getElementById('confirmed').textContent = confirmed; }
    if (m.type === 'partial') document.getElementById('partial').textContent = m.text;
    if (m.type === 'done') { statusLine.textContent = `live: ${m.duration.toFixed(1)} s of audio, done`;
                             document.getElementById('partial').textContent = ''; socket.close(); }
    if (m.type === 'error') statusLine.innerHTML = `<span class="error">${escapeHtml(m.error)}</span>`;
  };
  source.connect(node); node.connect(context.destination);
  live = {stop: () => {
    node.disconnect(); source.disconnect(); stream.getTracks().forEach(t => t.stop()); context.close();
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({type: 'end'}));
    live = null; e.target.textContent = 'Live';
  }};
  e.target.textContent = 'Stop live';
};
"""

_ENCODER_SCRIPT = """
const statusLine = document.getElementById('status'), result = document.getElementById('result');
function escapeHtml(s) { const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
document.getElementById('run').onclick = async () => {
  const lines = document.getElementById('input').value.split('\\n').filter(l => l.trim());
  if (!lines.length) { statusLine.textContent = 'write a sentence per line'; return; }
  const classify = document.body.dataset.task === 'text-classification';
  const body = classify ? {inputs: lines} : {inputs: {source_sentence: lines[0], sentences: lines.slice(1)}};
  const start = performance.now();
  // a classifier: the Inference API's POST / (TEI's /predict reads a list of two texts as one pair)
  const response = await fetch(classify ? './' : 'similarity',
                               {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) { statusLine.innerHTML = `<span class="error">${escapeHtml(answer.error)}</span>`; return; }
  statusLine.textContent = `${Math.round(performance.now() - start)} ms`;
  const rows = classify
    ? lines.map((l, i) => `<tr><td>${escapeHtml(l)}</td><td>${escapeHtml(answer[i][0].label)}</td><td>${answer[i][0].score.toFixed(4)}</td></tr>`)
    : lines.slice(1).map((l, i) => `<tr><td>${escapeHtml(l)}</td><td class="score">${answer[i].toFixed(4)}</td></tr>`);
  const head = classify ? '<tr><th>text</th><th>label</th><th>score</th></tr>'
                        : `<tr><th>compared with: ${escapeHtml(lines[0])}</th><th>cosine</th></tr>`;
  result.innerHTML = `<table>${head}${rows.join('')}</table>`;
};
"""

_FORMS = {
    "text": (
        '<textarea id="input">The train to Berlin leaves at half past eight.</textarea>'
        '<label>max new tokens <input id="max" type="number" value="48" min="1" max="512"></label>'
        '<button id="run">{verb}</button><div id="status"></div><div id="output"></div><div id="alternatives"></div>'
        '<p class="sub">Tokens are coloured by probability (green: likely, red: unlikely); click one for the most '
        "likely tokens at its position.</p>"
    ),
    "speech": (
        '<input id="file" type="file" accept="audio/*,video/*"><button id="run">Transcribe</button>'
        '<button id="mic">Record</button><button id="live">Live</button><div id="status"></div><div id="result"></div>'
    ),
    "encoder": (
        '<textarea id="input">A man is eating food.\nA man is eating a piece of bread.\n'
        'The girl is carrying a baby.</textarea><button id="run">{verb}</button><div id="status"></div>'
        '<div id="result"></div>'
    ),
}
_KINDS = {
    "translation": ("text", "Translate", _TEXT_SCRIPT),
    "text2text-generation": ("text", "Generate", _TEXT_SCRIPT),
    "text-generation": ("text", "Continue", _TEXT_SCRIPT),
    "automatic-speech-recognition": ("speech", "Transcribe", _SPEECH_SCRIPT),
    "feature-extraction": ("encoder", "Compare with the first line", _ENCODER_SCRIPT),
    "text-classification": ("encoder", "Classify each line", _ENCODER_SCRIPT),
}


def page(task: str, model: str, version: str) -> str:
    """The playground's HTML for a model serving ``task``."""
    kind, verb, script = _KINDS.get(task, ("encoder", "Run", _ENCODER_SCRIPT))
    form = _FORMS[kind].replace("{verb}", verb)
    title = f"turboseq playground: {html.escape(model)}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
        f'<body data-task="{html.escape(task)}"><h1>{title}</h1>'
        f'<p class="sub">{html.escape(task)} · turboseq {html.escape(version)}</p>{form}'
        '<footer><a href="metrics">metrics</a><a href="info">info</a><a href="docs">API</a></footer>'
        f"<script>const TASK = {json.dumps(task)};{script}</script></body></html>"
    )
