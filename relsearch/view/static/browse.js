// relsearch browse page: search by upload, by clicking a result, or by caption; local only.
const $ = (id) => document.getElementById(id);
const rows = $('rows'), status = $('status'), kbox = $('k');
const analogy = $('analogy'), explain = $('explain'), textbox = $('text');
let current = null;      // {kind: 'upload'|'id'|'text', value, name}
let lastUpload = null;   // the uploaded File, kept so a toggle can re-run it
let seq = 0;             // answers to superseded requests are dropped

function flags() {
  return '&k=' + encodeURIComponent(kbox.value) + '&analogy=' + (analogy.checked ? 1 : 0) +
         '&explain=' + (explain.checked ? 1 : 0);
}

// One request whose answer fills the rows: `pending` shows meanwhile, `query` tags the rows,
// `done(data)` is the status line after. Answers to superseded requests are dropped.
async function show(req, pending, query, done) {
  const mine = ++seq;
  status.textContent = pending + ' ...';
  try {
    const r = await req;
    const data = await r.json();
    if (mine !== seq) return;
    if (!r.ok) { status.textContent = 'error: ' + data.error; return; }
    rows.innerHTML = data.html;
    rows.dataset.query = query;
    status.textContent = done(data);
    if (status.getBoundingClientRect().top < 0) status.scrollIntoView();  // clicked far down the grid
  } catch (e) { if (mine === seq) status.textContent = 'error: ' + e; }
}

function run() {
  if (!current) return;
  let req;
  if (current.kind === 'upload') {
    req = fetch('query?name=' + encodeURIComponent(current.name) + flags(), {method: 'POST', body: lastUpload,
      headers: {'Content-Type': 'application/octet-stream'}});
  } else {
    req = fetch('search?' + current.kind + '=' + encodeURIComponent(current.value) + flags());
  }
  const name = current.name || current.value;
  show(req, 'searching ' + name, current.kind + ':' + current.value, (data) => {
    // what the server timed, under its own names: "caption" is the query's caption alone,
    // "explain" appears only when explain is on
    const t = data.timings_ms || {};
    const total = Object.values(t).reduce((a, b) => a + b, 0);
    return name + ': ' + total.toFixed(1) + ' ms (' +
      Object.keys(t).map(k => k + ' ' + t[k].toFixed(1)).join(', ') + ')';
  });
}

function fromHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.has('id')) current = {kind: 'id', value: h.get('id'), name: 'image #' + h.get('id')};
  else if (h.has('text')) { current = {kind: 'text', value: h.get('text')}; textbox.value = h.get('text'); }
  else return false;
  run();
  return true;
}

function upload(file) {
  if (!file) return;
  lastUpload = file;
  current = {kind: 'upload', value: file.name, name: file.name};
  history.replaceState(null, '', location.pathname);
  run();
}

// Clicking a result or a grid thumbnail searches with it (the hash makes it a link:
// back/forward work); Ctrl/Cmd-click or the middle button still open the file itself.
function searchWithHit(e) {
  const hit = e.target.closest('a.hit');
  if (!hit || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  location.hash = 'id=' + hit.dataset.id;
}
rows.addEventListener('click', searchWithHit);

// The collection grid: most recent first, a page at a time.
const grid = $('grid'), gridinfo = $('gridinfo'), pageno = $('pageno');
const newer = $('newer'), older = $('older');
let gridPage = 0;
async function loadGrid(page) {
  try {
    const r = await fetch('browse?page=' + page);
    const data = await r.json();
    if (!r.ok) { gridinfo.textContent = 'error: ' + data.error; return; }
    gridPage = data.page;
    grid.innerHTML = data.html;
    gridinfo.textContent = data.total + ' images, most recent first';
    pageno.textContent = 'page ' + (data.page + 1) + ' of ' + data.pages;
    newer.disabled = data.page === 0;
    older.disabled = data.page + 1 >= data.pages;
    newer.parentElement.hidden = data.pages < 2;
  } catch (e) { gridinfo.textContent = 'error: ' + e; }
}
grid.addEventListener('click', searchWithHit);
newer.addEventListener('click', () => loadGrid(gridPage - 1));
older.addEventListener('click', () => loadGrid(gridPage + 1));
loadGrid(0);
window.addEventListener('hashchange', fromHash);
[analogy, explain].forEach(box => box.addEventListener('change', run));
kbox.addEventListener('change', run);
$('textform').addEventListener('submit', (e) => {
  e.preventDefault();
  if (textbox.value.trim()) location.hash = 'text=' + encodeURIComponent(textbox.value.trim());
});
const drop = $('drop'), pick = $('pick');
pick.addEventListener('change', () => upload(pick.files[0]));
['dragenter', 'dragover'].forEach(ev => drop.addEventListener(ev, e => {
  e.preventDefault(); drop.classList.add('over'); }));
['dragleave', 'drop'].forEach(ev => drop.addEventListener(ev, e => {
  e.preventDefault(); drop.classList.remove('over'); }));
drop.addEventListener('drop', e => upload(e.dataTransfer.files[0]));
document.addEventListener('paste', e => {
  const f = [...(e.clipboardData || {}).files || []][0]; if (f) upload(f); });
fromHash();
