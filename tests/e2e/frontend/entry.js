// Test harness around Epic's stock Pixel Streaming frontend library.
// Bundled by tests/e2e/frontend/build.js (esbuild, IIFE); the UE5.5 bundle is the
// same file with the package name aliased. Everything the tests look at is
// recorded on window.epic.
import { Config, PixelStreaming, Logger } from '@epicgames-ps/lib-pixelstreamingfrontend-ue5.7';

const params = new URLSearchParams(window.location.search);
const state = {
    events: [],          // names of frontend events, in order
    framesDecoded: 0,    // from statsReceived (aggregatedStats.inboundVideoStats)
    subscribeFailed: null,
    signallingIn: [],    // message types received on the signalling socket
    signallingOut: [],   // message types sent on the signalling socket
    closes: [],          // signalling socket close codes
    errors: []
};
window.epic = state;

try {
    // Epic's logger is chatty at the default level; keep the console readable.
    if (Logger && typeof Logger.InitLogging === 'function') {
        Logger.InitLogging(params.get('LogLevel') ? Number(params.get('LogLevel')) : 1, false);
    }
} catch (e) {
    // older or newer Logger APIs: ignore
}

const settings = {
    AutoConnect: true,
    AutoPlayVideo: true,
    StartVideoMuted: true,
    WaitForStreamer: true,
    MaxReconnectAttempts: 0,
    // Hovering mouse: the locked scheme needs pointer lock, which headless
    // Chromium does not grant without a real user gesture.
    HoveringMouse: true
};
if (params.get('ss')) {
    settings.ss = params.get('ss');
}

const parent = document.getElementById('player') || document.body;
const config = new Config({ useUrlParams: true, initialSettings: settings });
const ps = new PixelStreaming(config, { videoElementParent: parent });
state.ps = ps;

const record = (name) => () => state.events.push(name);
for (const name of [
    'webRtcConnecting', 'webRtcConnected', 'webRtcFailed', 'webRtcDisconnected',
    'videoInitialized', 'playStream', 'playStreamRejected', 'playStreamError',
    'dataChannelOpen', 'dataChannelClose', 'streamerListMessage'
]) {
    ps.addEventListener(name, record(name));
}
ps.addEventListener('subscribeFailed', (e) => {
    state.events.push('subscribeFailed');
    state.subscribeFailed = (e.data && e.data.message) || 'subscribeFailed';
});
ps.addEventListener('statsReceived', (e) => {
    const video = e.data && e.data.aggregatedStats && e.data.aggregatedStats.inboundVideoStats;
    if (video && typeof video.framesDecoded === 'number') {
        state.framesDecoded = video.framesDecoded;
    }
});

try {
    const transport = ps.signallingProtocol.transport;
    transport.addListener('message', (msg) => state.signallingIn.push(msg.type));
    transport.addListener('out', (msg) => state.signallingOut.push(msg.type));
    transport.addListener('close', (ev) => state.closes.push(ev && ev.code));
} catch (e) {
    state.errors.push('no signalling transport hooks: ' + e);
}
