// multimodal_embed map viewer: a canvas scatter plot with pan/zoom, hover thumbnails, cluster labels and a search
// box for the queries embedded at build time. No network: everything it shows is in the page's #map-data JSON.
// Untrusted text (file names, texts, labels) is only ever set through textContent / properties, never as HTML.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("map-data").textContent);
  var n = D.x.length;
  var canvas = document.getElementById("map");
  var ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip");
  var tipImg = document.getElementById("tip-img");
  var tipName = document.getElementById("tip-name");
  var tipLabel = document.getElementById("tip-label");
  var tipError = document.getElementById("tip-error");
  var status = document.getElementById("status");
  var NOISE = "#cbd5e1", ERROR = "#7f7f7f", QUERY = "#e11d48";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#3b5bdb", "#f08c00", "#2b8a3e", "#c2255c", "#5f3dc4", "#0b7285", "#a61e4d"];
  function colorOf(c) { return c < 0 ? NOISE : PALETTE[c % PALETTE.length]; }

  // data bounds, with a margin
  var minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity, i;
  for (i = 0; i < n; i++) {
    if (D.x[i] < minX) minX = D.x[i]; if (D.x[i] > maxX) maxX = D.x[i];
    if (D.y[i] < minY) minY = D.y[i]; if (D.y[i] > maxY) maxY = D.y[i];
  }
  if (!(maxX > minX)) { minX -= 1; maxX += 1; }
  if (!(maxY > minY)) { minY -= 1; maxY += 1; }
  var padX = (maxX - minX) * 0.05, padY = (maxY - minY) * 0.05;
  minX -= padX; maxX += padX; minY -= padY; maxY += padY;

  // view: screen = (data - centre) * scale + half size (y up)
  var view = { cx: (minX + maxX) / 2, cy: (minY + maxY) / 2, scale: 1 };
  var W = 0, H = 0, dpr = window.devicePixelRatio || 1;
  function fit() {
    view.cx = (minX + maxX) / 2; view.cy = (minY + maxY) / 2;
    view.scale = Math.min(W / (maxX - minX), H / (maxY - minY));
  }
  function sx(x) { return (x - view.cx) * view.scale + W / 2; }
  function sy(y) { return H / 2 - (y - view.cy) * view.scale; }
  function dataX(px) { return (px - W / 2) / view.scale + view.cx; }
  function dataY(py) { return view.cy - (py - H / 2) / view.scale; }

  // points grouped by colour: one fillStyle per group
  var groups = {};
  for (i = 0; i < n; i++) {
    var col = D.err[i] !== undefined ? ERROR : colorOf(D.c[i]);
    (groups[col] = groups[col] || []).push(i);
  }
  var order = Object.keys(groups).sort(function (a, b) {  // noise under clusters, grey (errors) on top
    return (a === NOISE ? -1 : a === ERROR ? 1 : 0) - (b === NOISE ? -1 : b === ERROR ? 1 : 0);
  });

  // grid for hover look-ups, in data space
  var G = Math.max(1, Math.min(512, Math.round(Math.sqrt(n / 4)))), grid = new Array(G * G);
  function cell(x, y) {
    var gx = Math.min(G - 1, Math.max(0, Math.floor((x - minX) / (maxX - minX) * G)));
    var gy = Math.min(G - 1, Math.max(0, Math.floor((y - minY) / (maxY - minY) * G)));
    return [gx, gy];
  }
  for (i = 0; i < n; i++) { var g = cell(D.x[i], D.y[i]), k = g[1] * G + g[0]; (grid[k] = grid[k] || []).push(i); }
  function nearest(px, py, radius) {
    var x0 = cell(dataX(px - radius), dataY(py + radius)), x1 = cell(dataX(px + radius), dataY(py - radius));
    var best = -1, bd = radius * radius;
    for (var gy = x0[1]; gy <= x1[1]; gy++) for (var gx = x0[0]; gx <= x1[0]; gx++) {
      var list = grid[gy * G + gx]; if (!list) continue;
      for (var j = 0; j < list.length; j++) {
        var p = list[j], dx = sx(D.x[p]) - px, dy = sy(D.y[p]) - py, d = dx * dx + dy * dy;
        if (d <= bd) { bd = d; best = p; }
      }
    }
    return best;
  }

  var hover = -1, highlight = [], marker = null, showLabels = document.getElementById("labels");
  showLabels.addEventListener("change", function () { draw(); });
  var showPictures = document.getElementById("pictures");
  showPictures.addEventListener("change", function () { draw(); });
  var baseSize = Math.max(3, Math.min(10, 120 / Math.sqrt(Math.max(n, 1))));
  function pointSize() { return Math.max(2, Math.min(14, baseSize * Math.sqrt(view.scale / baseScale))); }
  var baseScale = 1;

  // zoomed in far enough that few points show: draw their thumbnails (decoded once, on first sight)
  var THUMBS_AT = 400, images = {}, pending = false;
  function thumbImage(p) {
    var im = images[p];
    if (im === undefined) {
      im = images[p] = new Image();
      im.onload = function () { if (!pending) { pending = true; requestAnimationFrame(function () { pending = false; draw(); }); } };
      im.src = "data:image/jpeg;base64," + D.thumbs[p];
    }
    return im.complete && im.naturalWidth ? im : null;
  }
  function visible() {
    var out = [];
    for (var p = 0; p < n && out.length <= THUMBS_AT; p++) {
      var x = sx(D.x[p]), y = sy(D.y[p]);
      if (x >= 0 && y >= 0 && x <= W && y <= H) out.push(p);
    }
    return out;
  }
  function drawThumbs() {
    var vis = visible();
    if (vis.length > THUMBS_AT) return;
    var side = Math.max(24, Math.min(72, 900 / Math.sqrt(vis.length + 1)));
    for (var k = 0; k < vis.length; k++) {
      var p = vis[k]; if (!D.thumbs[p]) continue;
      var im = thumbImage(p); if (!im) continue;
      var s = side / Math.max(im.naturalWidth, im.naturalHeight), w = im.naturalWidth * s, h = im.naturalHeight * s;
      var x = sx(D.x[p]) - w / 2, y = sy(D.y[p]) - h / 2;
      ctx.fillStyle = D.c[p] >= 0 ? colorOf(D.c[p]) : NOISE; ctx.fillRect(x - 2, y - 2, w + 4, h + 4);
      ctx.drawImage(im, x, y, w, h);
    }
  }

  function draw() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, W, H);
    var s = pointSize(), h = s / 2;
    for (var o = 0; o < order.length; o++) if (order[o] !== ERROR) drawGroup(order[o], s);
    if (showPictures.checked) drawThumbs();
    if (groups[ERROR]) drawGroup(ERROR, Math.max(8, s * 1.6));  // unreadable images stay visible over thumbnails
    ctx.lineWidth = 2; ctx.strokeStyle = QUERY;
    for (var q = 0; q < highlight.length; q++) {
      ctx.beginPath(); ctx.arc(sx(D.x[highlight[q]]), sy(D.y[highlight[q]]), s + 3, 0, 2 * Math.PI); ctx.stroke();
    }
    if (marker) {
      var mx = sx(marker.x), my = sy(marker.y);
      ctx.fillStyle = QUERY; ctx.beginPath(); ctx.arc(mx, my, 7, 0, 2 * Math.PI); ctx.fill();
      ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 2; ctx.stroke();
      label(marker.text, mx + 10, my - 10, QUERY, "left");
    }
    if (showLabels.checked) drawLabels();
    if (hover >= 0) {
      ctx.strokeStyle = "#111827"; ctx.lineWidth = 1.5;
      ctx.strokeRect(sx(D.x[hover]) - h - 2, sy(D.y[hover]) - h - 2, s + 4, s + 4);
    }
  }

  function drawGroup(col, r) {
    var list = groups[col], rh = r / 2;
    ctx.fillStyle = col;
    for (var j = 0; j < list.length; j++) {
      var p = list[j], x = sx(D.x[p]), y = sy(D.y[p]);
      if (x < -r || y < -r || x > W + r || y > H + r) continue;
      ctx.fillRect(x - rh, y - rh, r, r);
    }
  }

  function label(text, x, y, color, align) {
    ctx.font = "600 13px system-ui, sans-serif"; ctx.textAlign = align || "center"; ctx.textBaseline = "middle";
    ctx.lineWidth = 4; ctx.strokeStyle = "rgba(255,255,255,0.92)"; ctx.strokeText(text, x, y);
    ctx.fillStyle = color; ctx.fillText(text, x, y);
  }
  var clusters = D.clusters.slice().sort(function (a, b) { return b.size - a.size; });
  function drawLabels() {
    var boxes = [];
    ctx.font = "600 13px system-ui, sans-serif";
    for (var k = 0; k < clusters.length; k++) {
      var cl = clusters[k], x = sx(cl.x), y = sy(cl.y);
      if (x < 0 || y < 0 || x > W || y > H) continue;
      var text = cl.name + (cl.score !== null && D.kind === "image" && cl.name !== "unnamed"
        ? " " + cl.score.toFixed(2) : "");
      var w = ctx.measureText(text).width + 6, box = [x - w / 2, y - 9, x + w / 2, y + 9], clash = false;
      for (var b = 0; b < boxes.length && !clash; b++) {
        var o = boxes[b]; clash = !(box[2] < o[0] || box[0] > o[2] || box[3] < o[1] || box[1] > o[3]);
      }
      if (clash) continue;
      boxes.push(box);
      label(text, x, y, cl.name === "unnamed" ? "#6b7280" : "#111827");
    }
  }

  function resize() {
    var r = canvas.getBoundingClientRect();
    W = r.width; H = r.height; dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    var first = baseScale === 1 && view.scale === 1;
    if (first) { fit(); baseScale = view.scale; }
    draw();
  }

  function showTip(p, px, py) {
    if (p < 0) { tip.style.display = "none"; return; }
    tipName.textContent = D.items[p];
    var cl = D.c[p] >= 0 ? D.clusterName[D.c[p]] : "";
    tipLabel.textContent = cl ? "cluster: " + cl : "in no cluster";
    tipError.textContent = D.err[p] !== undefined ? "cannot read: " + D.err[p] : "";
    var t = D.thumbs[p];
    if (t) { tipImg.src = "data:image/jpeg;base64," + t; tipImg.style.display = "block"; }
    else { tipImg.removeAttribute("src"); tipImg.style.display = "none"; }
    tip.style.display = "block";
    var tw = tip.offsetWidth, th = tip.offsetHeight;
    tip.style.left = Math.min(px + 14, W - tw - 4) + "px";
    tip.style.top = Math.min(py + 14, H - th - 4) + "px";
  }

  // interaction: drag to pan, wheel to zoom at the cursor, double-click to reset, click to open the file
  var drag = null, moved = false;
  canvas.addEventListener("mousedown", function (e) { drag = { x: e.offsetX, y: e.offsetY, cx: view.cx, cy: view.cy }; moved = false; });
  window.addEventListener("mouseup", function () { drag = null; });
  canvas.addEventListener("mousemove", function (e) {
    if (drag) {
      var dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
      view.cx = drag.cx - dx / view.scale; view.cy = drag.cy + dy / view.scale;
      tip.style.display = "none"; draw(); return;
    }
    var p = nearest(e.offsetX, e.offsetY, Math.max(6, pointSize() + 2));
    if (p !== hover) { hover = p; draw(); }
    showTip(p, e.offsetX, e.offsetY);
  });
  canvas.addEventListener("mouseleave", function () { hover = -1; tip.style.display = "none"; draw(); });
  function zoomAt(px, py, f) {
    var x = dataX(px), y = dataY(py);
    view.scale = Math.max(baseScale * 0.2, Math.min(baseScale * 5000, view.scale * f));
    view.cx = x - (px - W / 2) / view.scale; view.cy = y + (py - H / 2) / view.scale;
    draw();
  }
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault(); zoomAt(e.offsetX, e.offsetY, Math.exp(-e.deltaY * 0.0015));
  }, { passive: false });
  canvas.addEventListener("dblclick", function () { fit(); draw(); });
  canvas.addEventListener("click", function (e) {
    if (moved) return;
    var p = nearest(e.offsetX, e.offsetY, Math.max(6, pointSize() + 2));
    if (p >= 0 && D.links[p]) window.open(D.links[p], "_blank", "noopener");
  });
  document.getElementById("zoom-in").addEventListener("click", function () { zoomAt(W / 2, H / 2, 1.6); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomAt(W / 2, H / 2, 1 / 1.6); });
  document.getElementById("reset").addEventListener("click", function () { fit(); draw(); });

  // search: a query embedded at build time goes on the map with its nearest points; other text filters names
  var box = document.getElementById("search"), list = document.getElementById("queries");
  D.queries.forEach(function (q) { var o = document.createElement("option"); o.value = q.text; list.appendChild(o); });
  function search(text) {
    text = text.trim(); marker = null; highlight = [];
    if (!text) { status.textContent = D.summary; draw(); return; }
    var low = text.toLowerCase(), q = null;
    for (var k = 0; k < D.queries.length; k++) if (D.queries[k].text.toLowerCase() === low) q = D.queries[k];
    if (q) {
      marker = q; highlight = q.neighbours.slice();
      view.cx = q.x; view.cy = q.y; view.scale = Math.max(view.scale, baseScale * 3);
      status.textContent = "\u201c" + q.text + "\u201d placed among its " + q.neighbours.length + " nearest items";
    } else {
      for (var p = 0; p < n && highlight.length < 500; p++) {
        var name = D.items[p].toLowerCase(), cl = D.c[p] >= 0 ? D.clusterName[D.c[p]].toLowerCase() : "";
        if (name.indexOf(low) >= 0 || cl.indexOf(low) >= 0) highlight.push(p);
      }
      status.textContent = "\u201c" + text + "\u201d was not embedded when the map was built" +
        (D.queries.length ? " (embedded: " + D.queries.map(function (x) { return x.text; }).join(", ") + ")" : "") +
        "; " + highlight.length + " items whose name or cluster contains it are circled";
    }
    draw();
  }
  document.getElementById("search-form").addEventListener("submit", function (e) { e.preventDefault(); search(box.value); });

  status.textContent = D.summary;
  window.addEventListener("resize", resize);
  resize();
  // for tests and scripts: where a point is drawn, and the search
  window.mmembedMap = {
    n: n, colours: PALETTE, screen: function (p) { var r = canvas.getBoundingClientRect(); return [r.left + sx(D.x[p]), r.top + sy(D.y[p])]; },
    screenXY: function (x, y) { var r = canvas.getBoundingClientRect(); return [r.left + sx(x), r.top + sy(y)]; },
    search: search, zoom: function (f) { zoomAt(W / 2, H / 2, f); }, view: view
  };
})();
