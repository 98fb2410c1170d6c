// A page whose kernel is gone says so, and recovers (whatsthat, issue 29).
//
// The kernel behind this page can go while the page stays open: culled after 10 idle minutes (a locked
// phone), shut down with its server at a restart or a redeploy. The widgets then send their clicks into
// the void. This script notices, from the kernel connection Voila's widget manager holds
// (window.jupyterapp.widgetManager.kernel, @jupyterlab/services' KernelConnection) and, whenever the
// visitor acts, from the kernel's own REST address (404: gone). It then shows a banner with a Reload
// button. When the visitor had chosen photos (whatsthat's photo input keeps them, or a FileUpload's value,
// read from its model) or an example, it reloads on their behalf and, in the new page, chooses them again and clicks what they
// clicked: the photos wait in IndexedDB meanwhile, for 10 minutes at most.
(function () {
  "use strict";
  var DB = "whatsthat", STORE = "choice", KEEP_MS = 10 * 60 * 1000;
  var TEXT = "This page went to sleep. Reload to classify again.";
  var LOST = "The connection to the server was lost while sending your photos. Reload to classify again.";
  var BROKEN = "This page did not finish loading. Reload to try again.";
  var RELOADED_AT = "whatsthat-broken-reload", RELOAD_GAP_MS = 60 * 1000, WATCH_MS = 5 * 60 * 1000;
  var APPEAR_MS = 45 * 1000;  // from the kernel connection to the app on the page: seconds, even on a slow phone
  var config = null, asleep = false, chosen = [], checking = null;

  function kernelUrl() {
    return (config.baseUrl || "/") + "api/kernels/" + encodeURIComponent(config.kernelId);
  }

  function kernelConnection() {
    var app = window.jupyterapp, manager = app && app.widgetManager;
    return (manager && manager.kernel) || null;
  }

  // "alive", "gone" (404), or "unreachable" (the server is down, or this device is offline)
  function kernelState() {
    return fetch(kernelUrl(), { cache: "no-store", credentials: "same-origin" }).then(
      function (r) { return r.status === 404 ? "gone" : r.ok ? "alive" : "unreachable"; },
      function () { return "unreachable"; });
  }

  // Resolves true when the page is (now) asleep
  function check() {
    if (asleep) return Promise.resolve(true);
    if (!config || !config.kernelId) return Promise.resolve(false);
    if (checking) return checking;
    checking = kernelState().then(function (state) {
      checking = null;
      var k = kernelConnection();
      var connected = k && k.connectionStatus === "connected";
      if (state === "gone" || (state === "unreachable" && !connected && navigator.onLine !== false)) {
        // a page whose app never appeared has nothing to lose: it reloads by itself (see brokenWidget)
        if (state === "gone" && neverRendered() && mayReloadNow()) reloadBroken();
        else sleep();
      }
      return asleep;
    });
    return checking;
  }

  function sleep(reloading, message) {
    var banner = document.getElementById("whatsthat-asleep");
    asleep = true;
    if (!banner) {
      banner = document.createElement("div");
      banner.id = "whatsthat-asleep";
      banner.setAttribute("role", "alert");
      banner.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:10000;display:flex;gap:12px;" +
        "align-items:center;justify-content:center;flex-wrap:wrap;padding:12px 16px;background:#fff3e0;" +
        "border-bottom:2px solid #ef6c00;color:#263238;font:16px system-ui,sans-serif";
      var text = document.createElement("span");
      text.className = "whatsthat-asleep-text";
      var button = document.createElement("button");
      button.textContent = "Reload";
      button.style.cssText = "font:inherit;min-height:44px;padding:6px 16px;border:0;border-radius:4px;" +
        "background:#b34700;color:#fff";  // a 44 px tap target; white on it is 5.5:1 (WCAG AA)
      button.addEventListener("click", function () { location.reload(); });
      banner.appendChild(text);
      banner.appendChild(button);
      document.body.appendChild(banner);
      // the widgets stay usable: choosing a photo or an example now reloads the page with that choice
    }
    banner.querySelector(".whatsthat-asleep-text").textContent =
      message || (reloading ? "This page went to sleep. Reloading it with your choice..." : TEXT);
  }

  // -- keeping what the visitor chose across the reload --

  function openDb() {
    return new Promise(function (resolve, reject) {
      if (!window.indexedDB) return reject(new Error("no IndexedDB"));
      var request = indexedDB.open(DB, 1);
      request.onupgradeneeded = function () { request.result.createObjectStore(STORE); };
      request.onsuccess = function () { resolve(request.result); };
      request.onerror = function () { reject(request.error); };
    });
  }

  function withStore(mode, action) {
    return openDb().then(function (db) {
      return new Promise(function (resolve, reject) {
        var tx = db.transaction(STORE, mode), result = action(tx.objectStore(STORE));
        tx.oncomplete = function () { db.close(); resolve(result && result.result); };
        tx.onerror = function () { db.close(); reject(tx.error); };
      });
    });
  }

  function keepAndReload(choice) {
    sleep(true);
    choice.at = Date.now();
    withStore("readwrite", function (store) { return store.put(choice, "last"); })
      .catch(function () { /* not kept: the visitor chooses again after the reload */ })
      .then(function () { setTimeout(function () { location.reload(); }, 800); });
  }

  function takeKept() {
    return withStore("readwrite", function (store) {
      var request = store.get("last");
      store.delete("last");
      return request;
    }).catch(function () { return null; });
  }

  function whenReady(test, timeoutMs) {
    return new Promise(function (resolve, reject) {
      var t0 = Date.now();
      (function poll() {
        var found = test();
        if (found) return resolve(found);
        if (Date.now() - t0 > timeoutMs) return reject(new Error("timeout"));
        setTimeout(poll, 100);
      })();
    });
  }

  function buttonNamed(name) {
    var buttons = document.querySelectorAll("button");
    for (var i = 0; i < buttons.length; i++) {
      if (buttons[i].textContent.trim() === name && !buttons[i].disabled) return buttons[i];
    }
    return null;
  }

  // The upload widgets' models (@jupyter-widgets/base), from the ids Voila's widget manager registered
  function uploadModels() {
    var app = window.jupyterapp, manager = app && app.widgetManager;
    if (!manager || !manager.registeredModels) return Promise.resolve([]);
    var ids = Array.from(manager.registeredModels);
    return Promise.all(ids.map(function (id) { return manager.get_model(id).catch(function () { return null; }); }))
      .then(function (models) {
        return models.filter(function (m) { return m && m.get("_model_name") === "FileUploadModel"; });
      });
  }

  function restore(choice) {
    if (!choice || Date.now() - choice.at > KEEP_MS) return;
    whenReady(function () {
      var k = kernelConnection();
      return k && k.connectionStatus === "connected" && buttonNamed("Classify");
    }, 120000).then(function () {
      if (choice.photos && choice.photos.length) {
        // whatsthat's photo input (whatsthat/web/assets/photoinput.js) sends them, and they are classified
        return whenReady(function () { return window.whatsthatPhotoInput; }, 120000).then(function (input) {
          input.choose(choice.photos);
        });
      }
      if (choice.example) {
        var example = document.querySelector('button[title="' + CSS.escape(choice.example) + '"]');
        if (example) example.click();
        return;
      }
      if (!choice.files || !choice.files.length) return;
      return uploadModels().then(function (models) {
        if (models.length !== 1) return;
        models[0].set({ value: choice.files, error: "" });
        models[0].save_changes();
        if (choice.classify) buttonNamed("Classify").click();
      });
    }).catch(function () { /* the page never became interactive: nothing to restore into */ });
  }

  // -- a page whose widgets never came --
  //
  // When Voila's widget manager cannot find the page's widgets in its kernel, it writes "Error displaying
  // widget: model not found" where the app should be (@jupyter-widgets/jupyterlab-manager's renderer), and
  // nothing on the page can work. Seen when the kernel died and jupyter_server restarted it empty before
  // the page connected (kernelpool.py now shuts such a kernel down), and once in CI with ten pages
  // loading at once on 2 cores (the widget manager gives the kernel 4 s to answer:
  // jupyter-widgets/ipywidgets#3633). The page reloads itself into a new kernel; a second failure within
  // a minute shows the banner instead, so a page never reloads in a loop.

  function brokenWidget() {
    var outputs = document.querySelectorAll(".jupyter-widgets");
    for (var i = 0; i < outputs.length; i++) {
      if (outputs[i].childElementCount === 0 && outputs[i].textContent.indexOf("Error displaying widget") === 0) {
        return true;
      }
    }
    return false;
  }

  // True, and the time noted, when this tab has not reloaded itself for a broken page within a minute
  function mayReloadNow() {
    try {
      var at = Number(sessionStorage.getItem(RELOADED_AT) || 0);
      if (Date.now() - at < RELOAD_GAP_MS) return false;
      sessionStorage.setItem(RELOADED_AT, String(Date.now()));
      return true;
    } catch (e) {
      return false;  // no session storage (a private window's quota): no way to tell a loop, so no reload
    }
  }

  function neverRendered() {
    return !document.querySelector("#rendered_cells button");
  }

  function reloadBroken() {
    sleep(true, "This page did not finish loading. Reloading it...");
    location.reload();
  }

  // once a minute at most the page reloads itself; a second failure within it shows the banner
  function broken() {
    if (asleep) return;
    if (mayReloadNow()) reloadBroken();
    else sleep(false, BROKEN);
  }

  function watchBroken() {
    var t0 = Date.now();
    var timer = setInterval(function () {
      if (Date.now() - t0 > WATCH_MS) return clearInterval(timer);
      if (!brokenWidget()) return;
      clearInterval(timer);
      broken();
    }, 500);
  }

  // The other way a page can be broken: nothing at all where the app goes, the kernel connected. The
  // app is app.ipynb's one output, and Voila drops a cell's output that comes too late after the cell
  // (nbclient's iopub_timeout: "Timeout waiting for IOPub output" in the server log). Seen once in CI,
  // ten pages at once on 2 cores, with nbclient's 4 s; serve.py now waits 60 s, and this catches the rest.
  // Any output counts as the app: the "not available right now" page must not reload.
  function anyOutput() {
    return !!document.querySelector("#rendered_cells .jp-OutputArea-output");
  }

  // -- watching --

  function onAct(event) {
    var target = event.target, choice = null;
    if (target.closest && target.closest("#whatsthat-asleep")) return;
    var button = target.closest && target.closest("button");
    var input = window.whatsthatPhotoInput, photos = input ? input.last() : [];
    if (button && button.textContent.trim() === "Classify" && photos.length) {
      choice = { photos: photos };  // the photo input's last photos: classified again after the reload
    } else if (button && button.textContent.trim() === "Classify" && chosen.length) {
      choice = { files: chosen, classify: true };
    } else if (button && (button.title || "").indexOf("Classify the example") === 0) {
      choice = { example: button.title };
    }
    check().then(function (isAsleep) { if (isAsleep && choice) keepAndReload(choice); });
  }

  // What the visitor chose: the upload widget's value (name, type, size, last_modified, content bytes)
  function watchUploads() {
    uploadModels().then(function (models) {
      models.forEach(function (model) {
        model.on("change:value", function () {
          chosen = (model.get("value") || []).slice();
          if (chosen.length) check().then(function (isAsleep) { if (isAsleep) keepAndReload({ files: chosen }); });
        });
      });
    });
  }

  function watchConnection() {
    whenReady(kernelConnection, 120000).then(function (k) {
      whenReady(function () { return buttonNamed("Classify"); }, 120000).then(watchUploads, function () {});
      whenReady(anyOutput, APPEAR_MS).catch(broken);
      k.connectionStatusChanged.connect(function (_, status) { if (status !== "connected") check(); });
      k.statusChanged.connect(function (_, status) {
        // a restarted kernel has lost the page's widgets: the page cannot work any more
        if (status === "dead" || status === "restarting" || status === "autorestarting") sleep();
      });
    }).catch(function () { check(); });
  }

  // The photo input's connection was lost mid-send (its photos never reached the kernel): say so, and when
  // the kernel is gone, reload keeping the photos. `photos`: File objects, kept in IndexedDB meanwhile.
  function lost(photos) {
    check().then(function (isAsleep) {
      if (isAsleep && photos && photos.length) keepAndReload({ photos: photos });
      else sleep(false, LOST);
    });
  }

  // what whatsthat's photo input calls (whatsthat/web/assets/photoinput.js)
  window.whatsthatAsleep = { check: check, keepAndReload: keepAndReload, lost: lost };

  function start() {
    var element = document.getElementById("jupyter-config-data");
    if (!element) return;
    try { config = JSON.parse(element.textContent); } catch (e) { return; }
    document.addEventListener("click", onAct, true);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) check(); });
    window.addEventListener("pageshow", function (e) { if (e.persisted) check(); });
    watchConnection();
    watchBroken();
    setTimeout(check, 1000);  // a kernel shut down before this page connected (a very slow start)
    takeKept().then(restore);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
