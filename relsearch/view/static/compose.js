// Composed queries (the dropped image + a second image + a caption) and duplicate groups.
// Shares the page's globals from browse.js ($, rows, status, kbox, lastUpload, show).
async function asBase64(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// show(req, pending, query, done) comes from browse.js.
function showAs(req, what) { show(req, what, what, () => what); }

$('composeform').addEventListener('submit', async (e) => {
  e.preventDefault();
  const images = [];
  if (lastUpload) images.push(await asBase64(lastUpload));
  const second = $('second').files[0];
  if (second) images.push(await asBase64(second));
  const text = $('addtext').value.trim();
  const body = JSON.stringify({images: images, text: text, k: parseInt(kbox.value, 10)});
  history.replaceState(null, '', location.pathname);
  showAs(fetch('compose', {method: 'POST', body: body, headers: {'Content-Type': 'application/json'}}),
       'combined: ' + images.length + ' image(s)' + (text ? ' + "' + text + '"' : ''));
});

$('dupesbtn').addEventListener('click', () => {
  const t = $('dupethreshold').value;
  showAs(fetch('dupes' + (t ? '?threshold=' + encodeURIComponent(t) : '')), 'duplicate groups');
});
