// The desk's only script (served from /static, so the Content-Security-Policy can forbid
// every inline script): live reader status, leaving a page when its card leaves, batch upload
// and progress. Every text it puts on the page goes through textContent.
'use strict';
(function () {
  const body = document.body;
  const status = document.getElementById('status');

  function renderReaders(live) {
    const list = document.getElementById('readers');
    if (!status || !list) return;
    const t = status.dataset;
    const items = [];
    if (!live.service) items.push([t.tDown, 'down']);
    else if (live.readers.length === 0) items.push([t.tNone, 'down']);
    list.replaceChildren();
    for (const [text, cls] of items) {
      const li = document.createElement('li');
      li.className = cls;
      li.textContent = text;
      list.appendChild(li);
    }
    for (const r of live.readers) {
      const li = document.createElement('li');
      li.className = r.present ? 'present' : 'absent';
      const name = document.createElement('span');
      name.className = 'reader';
      name.textContent = r.name;
      const state = document.createElement('strong');
      state.textContent = r.present ? t.tPresent : t.tAbsent;
      li.append(name, ': ', state);
      list.appendChild(li);
    }
    const busy = document.getElementById('busy');
    if (busy) {
      busy.hidden = !live.busy;
      busy.textContent = live.busy === 'batch' ? t.tBatch : t.tBusy;
    }
  }

  // A page showing a card's data leaves when that card leaves its reader (the server has
  // already dropped the citizen's session).
  function followCard(live) {
    const reader = body.dataset.sessionReader;
    if (!reader) return;
    const r = live.readers.find(function (x) { return x.name === reader; });
    if (!r || !r.present) {
      location.replace(body.dataset.view + '?ended=1');
    }
  }

  function renderBatch(live) {
    if (!body.dataset.batchRunning || !live.batch) return;
    const b = live.batch;
    if (b.finished) { location.reload(); return; }
    const bar = document.getElementById('batch-bar');
    if (bar) { bar.max = Math.max(b.total, 1); bar.value = b.done; bar.textContent = b.done + '/' + b.total; }
    const count = document.getElementById('batch-count');
    if (count) count.textContent = b.done + ' / ' + b.total;
    const run = document.getElementById('batch-run');
    const pass = document.getElementById('batch-pass');
    if (pass && run) pass.textContent = b.pass === 'write' ? run.dataset.tWrite : run.dataset.tKey;
    const note = document.getElementById('batch-note');
    if (note) note.textContent = b.note;
  }

  if (status && window.EventSource) {
    const es = new EventSource('/events');
    es.addEventListener('live', function (ev) {
      let live;
      try { live = JSON.parse(ev.data); } catch (e) { return; }
      renderReaders(live);
      followCard(live);
      renderBatch(live);
      body.dataset.live = '1';
    });
  }

  // Batch upload: the file's bytes as the body of a same-origin POST.
  const form = document.getElementById('batch');
  if (form) {
    form.addEventListener('submit', async function (ev) {
      ev.preventDefault();
      const input = document.getElementById('batch-file');
      const err = document.getElementById('batch-error');
      const button = document.getElementById('batch-go');
      if (!input.files || input.files.length === 0) return;
      button.disabled = true;
      err.hidden = true;
      try {
        const r = await fetch('/office/batch', {
          method: 'POST', body: input.files[0], credentials: 'same-origin',
          headers: { 'Content-Type': 'text/csv' },
        });
        if (r.ok) { location.assign('/office/batch'); return; }
        err.textContent = await r.text();
      } catch (e) {
        err.textContent = String(e);
      }
      err.hidden = false;
      button.disabled = false;
    });
  }
})();
