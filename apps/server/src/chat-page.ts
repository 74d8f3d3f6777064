// The chat page served at /: one self-contained HTML file that streams replies from
// /v1/chat/completions (SSE over fetch) and keeps the conversation in the page.
const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export function chatPage(modelName: string): string {
  const model = JSON.stringify(modelName).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dsv3 · ${escapeHtml(modelName)}</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; background: #fafafa; }
  header { padding: 8px 16px; background: #1f2937; color: #fff; display: flex; gap: 12px; align-items: center; }
  header input { flex: 0 0 220px; }
  #log { flex: 1; overflow-y: auto; padding: 16px; }
  .msg { max-width: 48em; margin: 0 0 12px; padding: 8px 12px; border-radius: 8px; white-space: pre-wrap; word-break: break-word; }
  .user { background: #dbeafe; margin-left: auto; }
  .assistant { background: #fff; border: 1px solid #e5e7eb; }
  .error { background: #fee2e2; }
  form { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid #e5e7eb; background: #fff; }
  #input { flex: 1; font: inherit; padding: 8px; }
  button { font: inherit; padding: 8px 16px; }
</style>
</head>
<body>
<header><strong>dsv3</strong><span id="model">${escapeHtml(modelName)}</span><span style="flex:1"></span>
  <label>temperature <input id="temp" type="number" value="0.7" min="0" step="0.1" style="width:4em"></label>
  <label>max tokens <input id="max" type="number" value="128" min="1" style="width:5em"></label>
  <input id="key" type="password" placeholder="API key (if the server wants one)"></header>
<div id="log" aria-live="polite"></div>
<form id="form"><input id="input" autocomplete="off" placeholder="Type a message" autofocus><button id="send" type="submit">Send</button></form>
<script>
const MODEL = ${model};
const history = [];
const log = document.getElementById('log');
const form = document.getElementById('form');
const input = document.getElementById('input');
const send = document.getElementById('send');
function bubble(role, text) {
  const d = document.createElement('div');
  d.className = 'msg ' + role;
  d.textContent = text;
  log.appendChild(d);
  log.scrollTop = log.scrollHeight;
  return d;
}
form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  send.disabled = true;
  history.push({ role: 'user', content: text });
  bubble('user', text);
  const out = bubble('assistant', '');
  out.dataset.state = 'streaming';
  const headers = { 'content-type': 'application/json' };
  const key = document.getElementById('key').value;
  if (key) headers.authorization = 'Bearer ' + key;
  let reply = '';
  try {
    const res = await fetch('/v1/chat/completions', { method: 'POST', headers,
      body: JSON.stringify({ model: MODEL, messages: history, stream: true,
        temperature: Number(document.getElementById('temp').value), max_tokens: Number(document.getElementById('max').value) || 128 }) });
    if (!res.ok) throw new Error((await res.json()).error.message);
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\\n\\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 2);
        if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
        const ev = JSON.parse(line.slice(6));
        if (ev.error) throw new Error(ev.error.message);
        const piece = ev.choices[0]?.delta?.content ?? '';
        reply += piece;
        out.textContent = reply;
        log.scrollTop = log.scrollHeight;
      }
    }
    history.push({ role: 'assistant', content: reply });
    out.dataset.state = 'done';
  } catch (e) {
    out.className = 'msg error';
    out.textContent = String(e.message || e);
    out.dataset.state = 'error';
    history.pop();
  } finally {
    send.disabled = false;
    input.focus();
  }
});
</script>
</body>
</html>
`;
}
