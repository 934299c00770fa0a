/* The page at /: every request goes to this service (relative URLs), nothing to any other host unless a tile URL
   is configured (ENRICH_TILE_URL). Leaflet (L) and Papa Parse (Papa) are served from the npm packages. */
(function () {
  "use strict";

  var LOOKUP_LAYERS = ["council_district", "neighborhood", "zip", "city_limits"];
  var FILE_LAYERS = ["council_district", "neighborhood", "zip"];
  var NAMES = {
    council_district: "Council district", neighborhood: "Neighborhood", zip: "ZIP", city_limits: "City limits"
  };
  var RULES = {  // what decided an answer: enrich_service/engine/rules.py
    edge: "on a shared edge: the documented tie-break picked one",
    overlap: "inside overlapping polygons: the documented tie-break picked one",
    nearest: "outside every polygon: the nearest within the distance asked"
  };
  var STYLES = {
    zip: { color: "#7c3aed", weight: 1, fillOpacity: 0.04, dashArray: "3 3" },
    neighborhood: { color: "#0f766e", weight: 1, fillOpacity: 0.05 },
    council_district: { color: "#1d4ed8", weight: 2, fillOpacity: 0.07 },
    city_limits: { color: "#111827", weight: 2.5, fill: false }
  };
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
  var SIMPLIFY_M = 15;
  var MAX_DRAWN = 100000;

  var $ = function (id) { return document.getElementById(id); };
  var state = { asOf: "", versions: [], drawn: {}, cache: {}, labels: {}, lastLookup: null, file: null };

  // A key's label ("3" -> "Council District 3") from the features drawn; geocode rows carry keys only.
  function labelFor(layer, key) {
    var known = state.labels[layer];
    return (known && key !== null && key !== undefined && known[key]) || key;
  }

  // ---- talking to the service ------------------------------------------------------------------------------------

  function query(params) {
    var q = new URLSearchParams();
    Object.keys(params).forEach(function (k) {
      var v = params[k];
      if (v !== undefined && v !== null && v !== "") q.set(k, v);
    });
    return q.toString();
  }

  function headers(extra) {
    var h = Object.assign({}, extra || {});
    var key = sessionStorage.getItem("enrichApiKey");
    if (key) h["X-API-Key"] = key;
    return h;
  }

  function errorText(status, text) {
    try {
      var body = JSON.parse(text);
      if (body && body.detail) {
        var detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
        return (body.field ? body.field + ": " : "") + detail + " (HTTP " + status + ")";
      }
    } catch (e) { /* not JSON */ }
    return "HTTP " + status + (text ? ": " + text.slice(0, 200) : "");
  }

  function askKeyOn401(status) {
    if (status !== 401) return false;
    var key = window.prompt("This service asks for an API key (X-API-Key) for lookups. Key:");
    if (!key) return false;
    sessionStorage.setItem("enrichApiKey", key);
    return true;
  }

  async function getJSON(url, retried) {
    var r = await fetch(url, { headers: headers({ Accept: "application/json" }) });
    var text = await r.text();
    if (!r.ok) {
      if (!retried && askKeyOn401(r.status)) return getJSON(url, true);
      throw new Error(errorText(r.status, text));
    }
    return { body: JSON.parse(text), headers: r.headers };
  }

  // ---- small DOM helpers ------------------------------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function show(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function status(id, text, isError) {
    var node = $(id);
    node.textContent = text;
    node.classList.toggle("error", !!isError);
  }

  // Fields a renderer does not know (added by a newer service) are listed as they are, never dropped.
  function otherFields(obj, known) {
    var keys = Object.keys(obj).filter(function (k) { return known.indexOf(k) < 0; });
    if (!keys.length) return null;
    var dl = el("dl", { className: "kv" });
    keys.forEach(function (k) {
      dl.appendChild(el("dt", { text: k }));
      dl.appendChild(el("dd", { text: show(obj[k]) }));
    });
    return el("details", {}, [el("summary", { text: "Other fields (" + keys.length + ")" }), dl]);
  }

  function ruleText(rule, value) {
    if (rule) return el("span", { className: "tag warn", title: RULES[rule] || rule, text: rule });
    return el("span", { title: "the one polygon holding the point",
                        text: value === null || value === undefined || value === "" ? "no polygon" : "inside" });
  }

  // ---- the map ---------------------------------------------------------------------------------------------------

  // People who asked their system for less motion get a map that jumps instead of gliding.
  var MOTION = !(window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches);
  var map = L.map("map", { preferCanvas: true, keyboard: true, zoomAnimation: MOTION, fadeAnimation: MOTION,
                           markerZoomAnimation: MOTION, inertia: MOTION }).setView([32.79, -117.13], 11);
  window.enrichMap = map;  // for the browser tests and for staff poking at the console
  var marker = null;
  var filePoints = L.layerGroup().addTo(map);
  ["zip", "neighborhood", "council_district", "city_limits"].forEach(function (name, i) {
    map.createPane("layer-" + name).style.zIndex = 410 + i;
  });

  function placeMarker(lat, lon, title) {
    if (marker) marker.remove();
    marker = L.marker([lat, lon], { title: title, alt: title, keyboard: true }).addTo(map);
  }

  function districtVersion() {
    return $("district-version").value || null;
  }

  async function drawLayer(name) {
    var version = name === "council_district" ? districtVersion() : null;
    var cacheKey = name + "@" + (version || "newest");
    var wanted = $("show-" + name).checked;
    if (state.drawn[name] && state.drawn[name].cacheKey !== cacheKey) {
      state.drawn[name].layer.remove();
      delete state.drawn[name];
    }
    if (!wanted) {
      if (state.drawn[name]) { state.drawn[name].layer.remove(); delete state.drawn[name]; }
      return;
    }
    if (state.drawn[name]) return;
    var layer = state.cache[cacheKey];
    if (!layer) {
      status("layers-status", "Loading " + NAMES[name].toLowerCase() + (version ? " (" + version + ")" : "") + "…");
      var got = await getJSON("v1/layers/" + encodeURIComponent(name) + "/features?" +
                              query({ version: version, simplify: SIMPLIFY_M }));
      var style = Object.assign({ pane: "layer-" + name, interactive: false }, STYLES[name]);
      layer = L.geoJSON(got.body, {
        style: function () { return style; },
        onEachFeature: name === "council_district" ? function (feature, lyr) {
          lyr.bindTooltip(String(feature.properties.key), {
            permanent: true, direction: "center", className: "district-label", interactive: false
          });
        } : undefined
      });
      layer.enrichMeta = got.body.metadata;
      var labels = state.labels[name] = state.labels[name] || {};
      got.body.features.forEach(function (f) { labels[f.properties.key] = f.properties.label; });
      state.cache[cacheKey] = layer;
    }
    // Still wanted, still the version chosen, and not drawn meanwhile by a quicker call?
    var current = name !== "council_district" || districtVersion() === version;
    if ($("show-" + name).checked && current && !state.drawn[name]) {
      layer.addTo(map);
      state.drawn[name] = { layer: layer, cacheKey: cacheKey };
    }
    status("layers-status", drawnSummary());
  }

  function drawnSummary() {
    var parts = Object.keys(state.drawn).map(function (name) {
      var m = state.drawn[name].layer.enrichMeta;
      return NAMES[name] + " " + m.version;
    });
    return parts.length ? "Drawn: " + parts.join(", ") + " (simplified to " + SIMPLIFY_M + " m for display)." : "";
  }

  function redraw(names) {
    return Promise.all(names.map(function (name) {
      return drawLayer(name).catch(function (e) { status("layers-status", e.message, true); });
    }));
  }

  // ---- the district lines: a version, or the version in force on a date -----------------------------------------

  function versionOn(day) {
    var found = null;
    state.versions.forEach(function (v) { if (v.effective_from <= day) found = v; });
    return found;
  }

  function describeAsOf() {
    var v = state.versions.filter(function (x) { return x.version === districtVersion(); })[0];
    if (!v) return;
    var span = "in force from " + v.effective_from + (v.effective_to ? " until " + v.effective_to : "");
    $("as-of-hint").textContent = state.asOf
      ? "Lookups and files use the layers in force on " + state.asOf + ": district lines " + v.version + " (" + span + ")."
      : "Lookups and files use today's layers: district lines " + v.version + " (" + span + ").";
  }

  function onVersionChosen() {
    var chosen = districtVersion();
    var newest = state.versions[state.versions.length - 1];
    var v = state.versions.filter(function (x) { return x.version === chosen; })[0];
    state.asOf = (v && v !== newest) ? v.effective_from : "";
    $("as-of").value = state.asOf;
    afterAsOfChange();
  }

  function onDateChosen() {
    var day = $("as-of").value;
    if (!day) { state.asOf = ""; $("district-version").value = state.versions[state.versions.length - 1].version; }
    else {
      var v = versionOn(day);
      if (!v) {
        status("layers-status", "No council district lines before " + state.versions[0].effective_from + ".", true);
        return;
      }
      state.asOf = day;
      $("district-version").value = v.version;
    }
    afterAsOfChange();
  }

  function afterAsOfChange() {
    describeAsOf();
    redraw(["council_district"]);
    if (state.lastLookup) state.lastLookup();
  }

  // ---- click / coordinates lookup --------------------------------------------------------------------------------

  async function lookupPoint(lon, lat) {
    state.lastLookup = function () { return lookupPoint(lon, lat); };
    $("lon").value = lon.toFixed(6);
    $("lat").value = lat.toFixed(6);
    placeMarker(lat, lon, "Looked-up point");
    var url = "v1/pip?" + query({ lon: lon.toFixed(6), lat: lat.toFixed(6), layers: LOOKUP_LAYERS.join(","),
                                  as_of: state.asOf });
    answerBusy("Looking up " + lat.toFixed(5) + ", " + lon.toFixed(5) + "…");
    try {
      var got = await getJSON(url);
      renderPip(got.body, url);
    } catch (e) {
      answerError(e.message);
    }
  }

  // One row per layer: the answer, then what decided it, the version and the file's sha256 beneath it.
  function layerTable(rows) {
    var tbody = el("tbody");
    rows.forEach(function (r) {
      tbody.appendChild(el("tr", { "data-layer": r.name }, [
        el("th", { scope: "row", text: NAMES[r.name] || r.name }),
        el("td", {}, [
          el("div", { className: "value", text: show(r.label) }),
          el("div", { className: "meta" }, ["rule: ", ruleText(r.rule, r.value), candidatesText(r.name, r.candidates),
                                            " · version ", show(r.version)]),
          el("div", { className: "sha", title: "sha256 of the layer file", text: "sha256 " + show(r.sha256) })
        ])
      ]));
    });
    return el("table", { className: "layers" }, [el("thead", {}, [el("tr", {}, [
      el("th", { scope: "col", text: "Layer" }), el("th", { scope: "col", text: "Answer" })])]), tbody]);
  }

  // An ambiguous answer's `<layer>_candidates` ("3;9"): the keys it could be, shown beside the rule.
  function candidatesText(layer, candidates) {
    if (typeof candidates !== "string" || !candidates) return null;
    var names = candidates.split(";").filter(Boolean).map(function (key) { return labelFor(layer, key); });
    return el("span", { className: "layer-candidates" }, [" — could be " + names.join(" or ")]);
  }

  function renderPip(a, url) {
    var layers = a.layers || {};
    var rows = Object.keys(layers).map(function (name) {
      return {
        name: name, value: a[name], label: (a.labels && a.labels[name]) || a[name],
        rule: a.rules ? a.rules[name] : null, version: layers[name].version, sha256: layers[name].sha256
      };
    });
    var parts = [
      el("p", { className: "hint", text: "Point " + a.lat + ", " + a.lon + (state.asOf ? " as of " + state.asOf : "") }),
      layerTable(rows)
    ];
    if (a.flags && a.flags.length) parts.push(el("p", {}, ["Flags: "].concat(a.flags.map(function (f) {
      return el("span", { className: "tag warn", text: f });
    }))));
    var details = a.details || {};
    var dl = el("dl", { className: "kv" });
    Object.keys(details).forEach(function (name) {
      Object.keys(details[name] || {}).forEach(function (k) {
        dl.appendChild(el("dt", { text: (NAMES[name] || name) + " " + k }));
        dl.appendChild(el("dd", { text: show(details[name][k]) }));
      });
    });
    if (a.distance_m) {
      Object.keys(a.distance_m).forEach(function (name) {
        dl.appendChild(el("dt", { text: (NAMES[name] || name) + " distance (m)" }));
        dl.appendChild(el("dd", { text: show(a.distance_m[name]) }));
      });
    }
    if (dl.childNodes.length) parts.push(dl);
    parts.push(otherFields(a, ["lon", "lat", "labels", "rules", "details", "flags", "layers", "distance_m"]
      .concat(Object.keys(layers))));
    parts.push(el("p", {}, [el("a", { href: url, id: "answer-json", target: "_blank", rel: "noopener" },
      ["This answer as JSON"])]));
    answerShow(parts);
  }

  // ---- address search --------------------------------------------------------------------------------------------

  async function geocode(address, zip) {
    state.lastLookup = function () { return geocode(address, zip); };
    var url = "v1/geocode?" + query({ address: address, zip: zip, layers: LOOKUP_LAYERS.join(","), as_of: state.asOf });
    answerBusy("Finding " + address + "…");
    try {
      var got = await getJSON(url);
      var used = {};
      try { used = JSON.parse(got.headers.get("X-Enrich-Layers") || "{}"); } catch (e) { used = {}; }
      renderGeocode(address, got.body, used, url);
    } catch (e) {
      answerError(e.message);
    }
  }

  function renderGeocode(address, row, used, url) {
    var known = ["lon", "lat", "match", "score", "matched_address", "reason", "flags", "error", "candidates", "id"];
    var layerNames = LOOKUP_LAYERS.filter(function (n) { return n in row; });
    var rows = layerNames.map(function (name) {
      known.push(name, name + "_rule", name + "_version", name + "_candidates");
      var u = used[name] || {};
      return { name: name, value: row[name], label: labelFor(name, row[name]), rule: row[name + "_rule"],
               candidates: row[name + "_candidates"], version: row[name + "_version"] || u.version,
               sha256: u.sha256 };
    });
    var located = typeof row.lon === "number" && typeof row.lat === "number";
    var dl = el("dl", { className: "kv" }, [
      el("dt", { text: "Address" }), el("dd", { text: address }),
      el("dt", { text: "Match level" }), el("dd", {}, [el("span", { className: "tag", id: "match-level",
                                                                        text: show(row.match) })]),
      el("dt", { text: "Score" }), el("dd", { text: typeof row.score === "number" ? row.score.toFixed(2) : show(row.score) }),
      el("dt", { text: "Matched" }), el("dd", { text: show(row.matched_address) }),
      el("dt", { text: "Location" }), el("dd", { text: located ? row.lat.toFixed(6) + ", " + row.lon.toFixed(6) : "none" })
    ]);
    if (row.reason) { dl.appendChild(el("dt", { text: "Why not more precise" })); dl.appendChild(el("dd", { text: row.reason })); }
    if (row.flags) { dl.appendChild(el("dt", { text: "Flags" })); dl.appendChild(el("dd", { text: show(row.flags) })); }
    if (row.error) { dl.appendChild(el("dt", { text: "Error" })); dl.appendChild(el("dd", { className: "error", text: row.error })); }
    var parts = [dl, layerTable(rows)];
    var candidates = Array.isArray(row.candidates) ? row.candidates : null;
    if (candidates && candidates.length) {
      var list = el("ol", { className: "candidates" });
      candidates.forEach(function (c) {
        var item = typeof c === "object" && c !== null ? c : { address: c };
        var text = [item.matched_address || item.address || item.street, item.zip, item.match,
                    typeof item.score === "number" ? "score " + item.score.toFixed(2) : null]
          .filter(function (x) { return x; }).join(" · ") || JSON.stringify(item);
        var li = el("li", {}, [text + " "]);
        if (typeof item.lon === "number" && typeof item.lat === "number") {
          var b = el("button", { type: "button", className: "link", text: "look up here" });
          b.addEventListener("click", function () { map.setView([item.lat, item.lon], 16, { animate: MOTION }); lookupPoint(item.lon, item.lat); });
          li.appendChild(b);
        }
        list.appendChild(li);
      });
      parts.push(el("h3", { text: "Candidates (the address is ambiguous)" }), list);
    }
    parts.push(otherFields(row, known));
    parts.push(el("p", {}, [el("a", { href: url, id: "answer-json", target: "_blank", rel: "noopener" },
      ["This answer as JSON"])]));
    answerShow(parts);
    if (located) {
      placeMarker(row.lat, row.lon, address + " (" + row.match + ")");
      marker.bindPopup(address + "<br>" + row.match).openPopup();
      map.setView([row.lat, row.lon], Math.max(map.getZoom(), 15), { animate: MOTION });
    }
  }

  function answerBusy(text) { $("answer-body").replaceChildren(el("p", { className: "hint", text: text })); }
  function answerError(text) { $("answer-body").replaceChildren(el("p", { className: "error", role: "alert", text: text })); }
  function answerShow(parts) {
    $("answer-body").replaceChildren.apply($("answer-body"), parts.filter(Boolean));
    $("answer").scrollIntoView({ block: "nearest" });
  }

  // ---- files -----------------------------------------------------------------------------------------------------

  function pick(columns, pattern) {
    return columns.filter(function (c) { return pattern.test(c.trim()); })[0] || "";
  }

  function fillSelect(id, columns, chosen, optional) {
    var s = $(id);
    s.replaceChildren();
    if (optional) s.appendChild(el("option", { value: "", text: "— none —" }));
    columns.forEach(function (c) { s.appendChild(el("option", { value: c, text: c })); });
    s.value = chosen || (optional ? "" : columns[0] || "");
  }

  function setMode(mode) {
    $("point-cols").hidden = mode !== "points";
    $("address-cols").hidden = mode !== "addresses";
  }

  async function chooseFile(file) {
    if (!file) return;
    status("file-status", "");
    $("file-summary").replaceChildren();
    var head = await file.slice(0, 65536).text();
    var isGeoJSON = /\.(geo)?json$/i.test(file.name) || /^\s*\{/.test(head);
    state.file = { file: file, kind: isGeoJSON ? "geojson" : "csv" };
    $("file-name").textContent = file.name + " (" + (file.size / 1024).toFixed(0) + " kB, " +
      (isGeoJSON ? "GeoJSON" : "CSV") + ")";
    $("csv-options").hidden = isGeoJSON;
    if (!isGeoJSON) {
      var parsed = Papa.parse(head, { preview: 1 });
      var columns = (parsed.data[0] || []).map(String);
      var lon = pick(columns, /^(lon|lng|long|longitude|x|point_x)$/i);
      var lat = pick(columns, /^(lat|latitude|y|point_y)$/i);
      fillSelect("lon-col", columns, lon, false);
      fillSelect("lat-col", columns, lat, false);
      fillSelect("address-col", columns, pick(columns, /^(address|addr|full_?address|street_?address|location)$/i), false);
      fillSelect("zip-col", columns, pick(columns, /^(zip|zip_?code|zipcode|postal_?code)$/i), true);
      fillSelect("date-col", columns, "", true);
      var mode = lon && lat ? "points" : "addresses";
      document.querySelector('input[name=mode][value="' + mode + '"]').checked = true;
      setMode(mode);
    }
    $("file-form").hidden = false;
  }

  function send(method, url, body, contentType, accept) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url);
      var h = headers({ "Content-Type": contentType, Accept: accept });
      Object.keys(h).forEach(function (k) { xhr.setRequestHeader(k, h[k]); });
      var bar = $("progress");
      $("file-progress").hidden = false;
      var phase = function (label, fraction) {
        $("progress-label").textContent = label;
        if (fraction === null) bar.removeAttribute("value"); else bar.value = Math.round(fraction * 100);
      };
      phase("Uploading", 0);
      xhr.upload.onprogress = function (e) { if (e.lengthComputable) phase("Uploading", e.loaded / e.total); };
      xhr.upload.onload = function () { phase("Tagging on the service", null); };
      xhr.onprogress = function (e) { phase("Receiving", e.lengthComputable ? e.loaded / e.total : null); };
      xhr.onerror = function () { reject(new Error("the service could not be reached")); };
      xhr.onload = function () {
        phase("Done", 1);
        if (xhr.status === 200) resolve(xhr);
        else reject(new Error(errorText(xhr.status, xhr.responseText)));
      };
      xhr.send(body);
    });
  }

  async function tagFile() {
    var f = state.file;
    if (!f) return;
    $("file-go").disabled = true;
    $("file-summary").replaceChildren();
    filePoints.clearLayers();
    var started = performance.now();
    try {
      var result = f.kind === "geojson" ? await tagGeoJSON(f.file) : await tagCSV(f.file);
      var seconds = ((performance.now() - started) / 1000).toFixed(1);
      status("file-status", result.rows.length.toLocaleString() + " rows tagged in " + seconds + " s.");
      summarize(result);
    } catch (e) {
      status("file-status", e.message, true);
    } finally {
      $("file-go").disabled = false;
    }
  }

  async function tagCSV(file) {
    var mode = document.querySelector("input[name=mode]:checked").value;
    var common = { layers: FILE_LAYERS.join(","), as_of: state.asOf, date_col: $("date-col").value };
    var url, lonCol, latCol;
    if (mode === "points") {
      lonCol = $("lon-col").value; latCol = $("lat-col").value;
      url = "v1/pip?" + query(Object.assign({ lon_col: lonCol, lat_col: latCol }, common));
    } else {
      lonCol = "lon"; latCol = "lat";  // the geocode's own columns in the answer
      url = "v1/geocode-join?" + query(Object.assign({ address_col: $("address-col").value,
                                                       zip_col: $("zip-col").value }, common));
    }
    status("file-status", "Sending " + file.name + " to " + url.split("?")[0] + "…");
    var xhr = await send("POST", url, file, "text/csv", "text/csv");
    status("file-status", "Reading the answer…");
    var text = xhr.responseText;
    var parsed = Papa.parse(text, { header: true, skipEmptyLines: "greedy" });
    var base = file.name.replace(/\.[^.]*$/, "");
    return {
      rows: parsed.data, lonCol: lonCol, latCol: latCol, geocoded: mode === "addresses",
      download: new Blob([text], { type: "text/csv" }), downloadName: base + "_enriched.csv",
      columns: parsed.meta.fields || []
    };
  }

  async function tagGeoJSON(file) {
    var doc;
    try { doc = JSON.parse(await file.text()); } catch (e) { throw new Error("file: not valid JSON (" + e.message + ")"); }
    var features = doc && doc.type === "FeatureCollection" ? doc.features : doc && doc.type === "Feature" ? [doc] : null;
    if (!Array.isArray(features)) throw new Error("file: not a GeoJSON Feature or FeatureCollection");
    var points = [], skipped = 0;
    features.forEach(function (f, i) {
      var g = f && f.geometry;
      if (g && g.type === "Point" && Array.isArray(g.coordinates) && g.coordinates.length >= 2) {
        points.push({ id: i, lon: g.coordinates[0], lat: g.coordinates[1] });
      } else {
        skipped += 1;
        f.properties = Object.assign({}, f.properties, { enrich_error: "not a Point geometry" });
      }
    });
    if (!points.length) throw new Error("file: no Point features to tag");
    var body = JSON.stringify({ points: points, layers: FILE_LAYERS, as_of: state.asOf || null });
    var xhr = await send("POST", "v1/pip", body, "application/json", "application/json");
    var answer = JSON.parse(xhr.responseText);
    answer.results.forEach(function (r) {
      var f = features[r.id];
      var extra = {};
      Object.keys(r).forEach(function (k) { if (k !== "id") extra[k === "error" ? "enrich_error" : k] = r[k]; });
      f.properties = Object.assign({}, f.properties, extra);
    });
    var rows = features.map(function (f) {
      var g = f.geometry || {};
      var c = g.type === "Point" ? g.coordinates : [null, null];
      return Object.assign({ __lon: c[0], __lat: c[1] }, f.properties);
    });
    if (skipped) status("file-status", skipped + " features are not points and were left untagged.");
    return {
      rows: rows, lonCol: "__lon", latCol: "__lat", geocoded: false,
      download: new Blob([JSON.stringify(doc)], { type: "application/geo+json" }),
      downloadName: file.name.replace(/\.[^.]*$/, "") + "_enriched.geojson"
    };
  }

  function countBy(rows, key) {
    var counts = {};
    rows.forEach(function (r) {
      var v = r[key];
      var k = v === null || v === undefined || v === "" ? "" : String(v);
      counts[k] = (counts[k] || 0) + 1;
    });
    return counts;
  }

  function countTable(caption, counts, labelOf) {
    var keys = Object.keys(counts).sort(function (a, b) {
      if (a === "") return 1;
      if (b === "") return -1;
      return isNaN(a) || isNaN(b) ? a.localeCompare(b) : Number(a) - Number(b);
    });
    var tbody = el("tbody", {}, keys.map(function (k) {
      return el("tr", {}, [el("th", { scope: "row", text: labelOf(k) }), el("td", { text: counts[k].toLocaleString() })]);
    }));
    return el("table", {}, [el("caption", { text: caption }), el("thead", {}, [el("tr", {}, [
      el("th", { scope: "col", text: caption.split(" per ")[1] || "value" }), el("th", { scope: "col", text: "rows" })])]),
      tbody]);
  }

  function summarize(result) {
    var rows = result.rows;
    var errors = rows.filter(function (r) { return r.error || r.enrich_error; }).length;
    var unmatched = rows.filter(function (r) { return !r.council_district; }).length;
    var parts = [el("dl", { className: "kv", id: "summary-counts" }, [
      el("dt", { text: "Rows" }), el("dd", { text: rows.length.toLocaleString() }),
      el("dt", { text: "Unmatched (no district)" }), el("dd", { text: unmatched.toLocaleString() }),
      el("dt", { text: "of which row errors" }), el("dd", { text: errors.toLocaleString() })
    ])];
    parts.push(countTable("Rows per district", countBy(rows, "council_district"), function (k) {
      return k ? "District " + k : "none";
    }));
    if (result.geocoded) {
      parts.push(countTable("Rows per match level", countBy(rows, "match"), function (k) { return k || "none"; }));
    }
    var link = el("a", { className: "download", id: "download", href: URL.createObjectURL(result.download),
                         download: result.downloadName, text: "Download " + result.downloadName });
    parts.unshift(el("p", {}, [link]));
    $("file-summary").replaceChildren(el("div", { className: "summary" }, parts));
    drawRows(result);
    $("file-summary").scrollIntoView({ block: "nearest" });
  }

  // Rows drawn in their district's colour (grey: no district). The view fits the rows that have a district, so
  // the strays real files hold (90/180, 0/0, a default 32/-117) do not zoom the map out to the whole world.
  function drawRows(result) {
    var n = 0, matched = null, all = null;
    var renderer = L.canvas({ padding: 0.2 });
    var extend = function (b, lat, lon) { return b ? b.extend([lat, lon]) : L.latLngBounds([lat, lon], [lat, lon]); };
    result.rows.some(function (r) {
      var lon = parseFloat(r[result.lonCol]), lat = parseFloat(r[result.latCol]);
      if (!isFinite(lon) || !isFinite(lat) || Math.abs(lat) > 85 || Math.abs(lon) > 180) return false;
      var d = r.council_district ? String(r.council_district) : "";
      var color = d ? PALETTE[(parseInt(d, 10) - 1 + PALETTE.length) % PALETTE.length] || "#444" : "#6b7280";
      L.circleMarker([lat, lon], { renderer: renderer, radius: 3, weight: 0, fillOpacity: 0.8, fillColor: color,
                                   interactive: false }).addTo(filePoints);
      if (d) matched = extend(matched, lat, lon); else all = extend(all, lat, lon);
      n += 1;
      return n >= MAX_DRAWN;
    });
    var bounds = matched || all;
    if (bounds) map.fitBounds(bounds.pad(0.05), { maxZoom: 16, animate: MOTION });
    if (n >= MAX_DRAWN) status("file-status", $("file-status").textContent + " The first " + MAX_DRAWN.toLocaleString() +
                               " rows are drawn.");
  }

  // ---- wiring ----------------------------------------------------------------------------------------------------

  map.on("click", function (e) { lookupPoint(e.latlng.lng, e.latlng.lat); });
  $("point-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var lon = parseFloat($("lon").value), lat = parseFloat($("lat").value);
    if (!isFinite(lon) || !isFinite(lat)) { answerError("Longitude and latitude must be numbers."); return; }
    map.setView([lat, lon], Math.max(map.getZoom(), 14), { animate: MOTION });
    lookupPoint(lon, lat);
  });
  $("lookup-centre").addEventListener("click", function () {
    var c = map.getCenter();
    lookupPoint(c.lng, c.lat);
  });
  $("geocode-form").addEventListener("submit", function (e) {
    e.preventDefault();
    geocode($("address").value.trim(), $("address-zip").value.trim());
  });
  $("district-version").addEventListener("change", onVersionChosen);
  $("as-of").addEventListener("change", onDateChosen);
  ["council_district", "neighborhood", "zip", "city_limits"].forEach(function (name) {
    $("show-" + name).addEventListener("change", function () { redraw([name]); });
  });
  $("file").addEventListener("change", function (e) { chooseFile(e.target.files[0]); });
  document.querySelectorAll("input[name=mode]").forEach(function (r) {
    r.addEventListener("change", function () { setMode(r.value); });
  });
  $("file-form").addEventListener("submit", function (e) { e.preventDefault(); tagFile(); });
  var drop = $("drop");
  ["dragenter", "dragover"].forEach(function (t) {
    drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (t) {
    drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) { chooseFile(e.dataTransfer.files[0]); });

  async function showBaseMap() {
    var config = (await getJSON("page/config")).body;
    if (config.tile_url) {
      L.tileLayer(config.tile_url, { attribution: config.tile_attribution, maxZoom: config.tile_max_zoom }).addTo(map);
    } else {
      $("tile-note").hidden = false;
    }
  }

  // The layers' versions, then the layers drawn. A service still loading its layers answers 503: try again.
  async function start() {
    try {
      var layers = (await getJSON("v1/layers")).body.layers;
      state.versions = layers.council_district.versions;
      var select = $("district-version");
      select.replaceChildren();
      state.versions.slice().reverse().forEach(function (v) {
        select.appendChild(el("option", { value: v.version, text: v.version + " lines (from " + v.effective_from + ")" }));
      });
      select.value = state.versions[state.versions.length - 1].version;
      $("as-of").min = state.versions[0].effective_from;
      describeAsOf();
      await redraw(["zip", "neighborhood", "council_district", "city_limits"]);
      document.body.dataset.ready = "true";
    } catch (e) {
      var loading = /HTTP 503/.test(e.message);
      status("layers-status", e.message + (loading ? " Trying again in a few seconds." : ""), true);
      if (loading) setTimeout(start, 3000);
    }
  }
  showBaseMap().catch(function (e) { status("layers-status", e.message, true); }).then(start);
})();
