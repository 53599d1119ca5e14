// Composed queries (the dropped image + a second image + a caption) and duplicate groups.
// Shares the page's globals from browse.js ($, rows, status, kbox, lastUpload, seq).
async function asBase64(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function show(req, what) {
  const mine = ++seq;
  status.textContent = what + ' ...';
  try {
    const r = await req;
    const data = await r.json();
    if (mine !== seq) return;
    if (!r.ok) { status.textContent = 'error: ' + data.error; return; }
    rows.innerHTML = data.html;
    rows.dataset.query = what;
    status.textContent = what;
  } catch (e) { if (mine === seq) status.textContent = 'error: ' + e; }
}

$('composeform').addEventListener('submit', async (e) => {
  e.preventDefault();
  const images = [];
  if (lastUpload) images.push(await asBase64(lastUpload));
  const second = $('second').files[0];
  if (second) images.push(await asBase64(second));
  const text = $('addtext').value.trim();
  const body = JSON.stringify({images: images, text: text, k: parseInt(kbox.value, 10)});
  history.replaceState(null, '', location.pathname);
  show(fetch('compose', {method: 'POST', body: body, headers: {'Content-Type': 'application/json'}}),
       'combined: ' + images.length + ' image(s)' + (text ? ' + "' + text + '"' : ''));
});

$('dupesbtn').addEventListener('click', () => {
  const t = $('dupethreshold').value;
  show(fetch('dupes' + (t ? '?threshold=' + encodeURIComponent(t) : '')), 'duplicate groups');
});
