#!/usr/bin/python3
"""Test RTSP camera: /cam (H264+AAC), /cam265 (H265+AAC), /camg711 (H264+PCMU), /camb (H264 Main with B-frames + AAC),
and /marks: the MP4 file named by $MARKS_FILE (H264 + AAC), played once per client from its start;
/video: the same for $VIDEO_FILE, an H264-only MP4.
Usage: /usr/bin/python3 rtsp_server.py PORT [USER PASS]   (prints READY when listening, and
CLIENT CONNECTED / CLIENT CLOSED lines as clients come and go)

The real RTSP server the RTSP-pull tests (issue 7) will run. Needs Debian's
python3-gst-1.0, gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-{base,good,bad,ugly}
plus gstreamer1.0-libav; run it with /usr/bin/python3 (a venv lacks `gi`)."""
import os, signal, sys
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtsp, GstRtspServer, GLib

Gst.init(None)
port = sys.argv[1] if len(sys.argv) > 1 else "8554"
V = ("videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1"
     " ! videoconvert ! video/x-raw,format=I420 ! ")
H264 = V + "x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max=30 ! rtph264pay name=pay0 pt=96 config-interval=-1"
H264B = V + "x264enc speed-preset=superfast bframes=2 b-adapt=false key-int-max=30 ! video/x-h264,profile=main ! rtph264pay name=pay0 pt=96 config-interval=-1"
H265 = V + "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph265pay name=pay0 pt=96 config-interval=-1"
A = "audiotestsrc is-live=true wave=sine freq=440 ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! "
AAC = A + "avenc_aac bitrate=128000 ! rtpmp4gpay name=pay1 pt=97"
PCMU = ("audiotestsrc is-live=true ! audio/x-raw,rate=8000,channels=1 ! audioconvert ! mulawenc"
        " ! rtppcmupay name=pay1 pt=0")

server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1"); server.set_service(port)
mounts = server.get_mount_points()
for path, launch in (("/cam", H264 + " " + AAC), ("/cam265", H265 + " " + AAC),
                     ("/camg711", H264 + " " + PCMU), ("/camb", H264B + " " + AAC)):
    f = GstRtspServer.RTSPMediaFactory()
    f.set_launch("( " + launch + " )")
    f.set_shared(True)            # one pipeline for all clients
    if len(sys.argv) > 3:         # Basic/Digest auth with USER PASS
        f.add_role_from_structure(Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
    mounts.add_factory(path, f)
marks = os.environ.get("MARKS_FILE")
if marks:
    f = GstRtspServer.RTSPMediaFactory()
    f.set_launch('( filesrc location="%s" ! qtdemux name=d '
                 'd.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 '
                 'd.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )' % marks)
    mounts.add_factory("/marks", f)
video = os.environ.get("VIDEO_FILE")
if video:   # an H264-only MP4 (the ingest benchmark's camera), played once per client from its start
    f = GstRtspServer.RTSPMediaFactory()
    f.set_launch('( filesrc location="%s" ! qtdemux ! queue ! h264parse '
                 '! rtph264pay name=pay0 pt=96 config-interval=-1 )' % video)
    mounts.add_factory("/video", f)

def on_client(_server, client):
    print("CLIENT CONNECTED", flush=True)
    client.connect("closed", lambda _c: print("CLIENT CLOSED", flush=True))
server.connect("client-connected", on_client)
if len(sys.argv) > 3:
    auth = GstRtspServer.RTSPAuth()
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    tok = GstRtspServer.RTSPToken(); tok.set_string("media.factory.role", "user")
    auth.add_digest(sys.argv[2], sys.argv[3], tok)
    server.set_auth(auth)
if server.attach(None) == 0:
    sys.exit("bind failed on port " + port)
loop = GLib.MainLoop()
for s in (signal.SIGTERM, signal.SIGINT):
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, s, loop.quit)
print("READY rtsp://127.0.0.1:%s/cam" % port, flush=True)
loop.run()
